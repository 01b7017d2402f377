"""Builds mfa_torch and its C++ extension mfa_torch._C.

On macOS the MPS executor (csrc/mps/) is compiled in and linked against Metal and Foundation; everywhere else
the extension holds the op schemas and the portable planning code only (tests type-check csrc/mps on Linux).
Build with the torch you run (`pip install --no-build-isolation .`): the extension compiles against its headers.
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# torch 2.13's macOS wheels are built for macOS 14; its headers fail below 10.13 (facts: macos-packaging.md).
MACOS_DEPLOYMENT_TARGET = "14.0"
TORCH_REQUIREMENT = "torch>=2.13,<2.15"


def sources(pattern):
    # Relative paths: setuptools rejects absolute source paths in editable builds.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern), recursive=True))


def extension_settings(platform):
    """Sources, macros, compiler and linker arguments of mfa_torch._C on `platform` (a sys.platform value)."""
    portable = [s for s in sources("csrc/**/*.cpp") if not s.startswith(os.path.join("csrc", "mps"))]
    settings = dict(sources=portable, define_macros=[], extra_compile_args=["-O2", "-std=c++20"], extra_link_args=[])
    if platform == "darwin":  # the MPS executor: C++ and a little Objective-C++ against Metal, for Apple silicon only
        settings["sources"] += sources("csrc/mps/**/*.cpp") + sources("csrc/mps/**/*.mm")
        settings["define_macros"].append(("MFA_TORCH_WITH_MPS", "1"))
        arch = ["-arch", "arm64", f"-mmacosx-version-min={MACOS_DEPLOYMENT_TARGET}"]
        settings["extra_compile_args"] += ["-fobjc-arc", *arch]
        settings["extra_link_args"] += [*arch, "-framework", "Metal", "-framework", "Foundation"]
    return settings


def darwin_environment(environ):
    """A python.org universal2 interpreter would also build an x86_64 slice (ARCHFLAGS) for an old macOS."""
    target = environ.get("MACOSX_DEPLOYMENT_TARGET", "")
    version = tuple(int(part) for part in target.split(".") if part.isdigit())
    if version < (14,):
        environ["MACOSX_DEPLOYMENT_TARGET"] = MACOS_DEPLOYMENT_TARGET
    environ["ARCHFLAGS"] = "-arch arm64"


def main():
    if sys.platform == "darwin":  # before setuptools reads the interpreter's build configuration
        darwin_environment(os.environ)
    from setuptools import find_packages, setup
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.exit(f"mfa_torch: the build needs torch: install torch first ({TORCH_REQUIREMENT}), then build with "
                 "pip install --no-build-isolation . (an isolated build cannot see your torch)")
    settings = extension_settings(sys.platform)
    # The wheel's tag says what it holds: arm64 code for macOS 14 and later.
    options = {"bdist_wheel": {"plat_name": "macosx_14_0_arm64"}} if sys.platform == "darwin" else {}
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
            CppExtension("mfa_torch._C", include_dirs=[os.path.join(HERE, "csrc"), os.path.join(HERE, "shaders")],
                         **settings)
        ],
        cmdclass={"build_ext": BuildExtension},
        python_requires=">=3.10",
        install_requires=[TORCH_REQUIREMENT, "numpy"],
        extras_require={"test": ["pytest", "hypothesis"]},
        options=options,
    )


if __name__ == "__main__":
    main()
