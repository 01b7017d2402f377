"""The portable C++ (planners and shader-source expansion) as a standalone test binary that links neither torch nor
pybind (tests/cpp/portable_test.cpp), built and run with GCC and libstdc++ and with clang and libc++, the standard
library of Apple's toolchain, with sanitizers: libc++ differences show on Linux before a Mac build meets them."""
import pathlib
import shutil
import subprocess
import sys

import pytest

import mfa_torch._C

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Everything in csrc/ builds without torch except the op registration and the Python bindings (and csrc/mps).
TORCH_GLUE = {"ops.cpp", "plan_bindings.cpp"}
PORTABLE_SOURCES = sorted(p for p in (ROOT / "csrc").rglob("*.cpp")
                          if "mps" not in p.relative_to(ROOT / "csrc").parts and p.name not in TORCH_GLUE)
FLAGS = ["-std=c++20", "-Wall", "-Wextra", "-Werror", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'shaders'}"]

# name: (compiler command, the standard library the binary must report, what to install when it is missing)
TOOLCHAINS = {
    "gcc-libstdc++": (["g++"], "libstdc++", "install the Debian package g++"),
    "clang-libc++": (["clang++", "-stdlib=libc++"], "libc++",
                     "install the Debian packages clang libc++-dev libc++abi-dev (on macOS they are the default "
                     "toolchain: xcode-select --install)"),
}


def _require_toolchain(compiler, install, tmp_path):
    """Fail (not skip) in one line when the toolchain cannot build a C++20 program: CI must have both."""
    probe = tmp_path / "probe.cpp"
    probe.write_text("#include <string>\nint main() { return int(std::string().size()); }\n")
    if shutil.which(compiler[0]) is None or subprocess.run(
            [*compiler, "-std=c++20", str(probe), "-o", str(tmp_path / "probe")], capture_output=True).returncode:
        pytest.fail(f"{' '.join(compiler)} cannot build C++20 programs: {install}", pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_portable_cpp_unit_tests_pass(toolchain, tmp_path):
    if toolchain == "gcc-libstdc++" and sys.platform == "darwin":
        pytest.skip("macOS has no libstdc++ toolchain (g++ is clang there); the clang-libc++ build covers it")
    compiler, library, install = TOOLCHAINS[toolchain]
    _require_toolchain(compiler, install, tmp_path)
    binary = tmp_path / "portable_test"
    build = subprocess.run([*compiler, *FLAGS, *map(str, PORTABLE_SOURCES), str(ROOT / "tests" / "cpp" /
                                                                               "portable_test.cpp"), "-o", str(binary)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-6000:]
    (tmp_path / "scratch").mkdir()
    run = subprocess.run([str(binary), str(ROOT / "shaders"), str(tmp_path / "scratch")], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-6000:]
    assert run.stdout.splitlines()[0] == f"standard library: {library}"


def test_the_extension_instantiates_no_std_regex():
    """torch's libraries export their own std::regex instantiations and the dynamic linker binds some of the
    extension's regex symbols to them: with torch 2.11 and GCC 13.3 the shader-source expansion segfaulted."""
    symbols = subprocess.run(["nm", "-C", mfa_torch._C.__file__], capture_output=True, text=True, check=True).stdout
    assert [line for line in symbols.splitlines() if "regex" in line] == []
