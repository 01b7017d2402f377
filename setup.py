"""Builds mfa_torch and its C++ extension mfa_torch._C.

On macOS the MPS executor (csrc/mps/*.mm) is compiled in and linked against Metal and Foundation;
everywhere else the extension holds the op schemas and the portable planning code only.
"""
import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    # Relative paths: setuptools rejects absolute source paths in editable builds.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern), recursive=True))


cpp_sources = sources("csrc/**/*.cpp")
compile_args = {"cxx": ["-O2", "-std=c++17"]}
link_args = []
define_macros = []
objc_sources = sources("csrc/mps/**/*.mm") if sys.platform == "darwin" else []
if objc_sources:  # the MPS executor: Objective-C++ against Metal, compiled on macOS only
    cpp_sources += objc_sources
    define_macros.append(("MFA_TORCH_WITH_MPS", "1"))
    compile_args["cxx"] += ["-fobjc-arc"]
    link_args += ["-framework", "Metal", "-framework", "Foundation"]

setup(
    name="mfa_torch",
    version="0.1.0",
    description="FlashAttention-style attention and GEMM for PyTorch on Apple GPUs (MPS)",
    packages=find_packages(include=["mfa_torch", "mfa_torch.*"]) + ["mfa_torch.shaders"],
    package_dir={"mfa_torch.shaders": "shaders"},
    package_data={
        "mfa_torch": ["emulator/**/*"],
        "mfa_torch.shaders": ["*.metal", "*.h"],
    },
    ext_modules=[
        CppExtension(
            "mfa_torch._C",
            cpp_sources,
            include_dirs=[os.path.join(HERE, "csrc"), os.path.join(HERE, "shaders")],
            define_macros=define_macros,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "numpy"],
    extras_require={"test": ["pytest", "hypothesis"]},
)
