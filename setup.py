"""Builds mfa_torch and its C++ extension mfa_torch._C.

On macOS the MPS executor (csrc/mps/) is compiled in and linked against Metal and Foundation; everywhere else
the extension holds the op schemas and the portable planning code only (tests type-check csrc/mps on Linux).
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


cpp_sources = [s for s in sources("csrc/**/*.cpp") if not s.startswith(os.path.join("csrc", "mps"))]
compile_args = {"cxx": ["-O2", "-std=c++20"]}
link_args = []
define_macros = []
if sys.platform == "darwin":  # the MPS executor: C++ and a little Objective-C++ against Metal
    cpp_sources += sources("csrc/mps/**/*.cpp") + sources("csrc/mps/**/*.mm")
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
