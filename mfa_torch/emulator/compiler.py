"""From MSL source to a compiled, cached artefact: preprocess, translate, add launchers, g++.

The cache key is a hash of everything the artefact depends on: the preprocessed source (so resolved
includes and defines), function constants, the shim and runtime files, the compiler flags (so the
fast-math and profile modes) and the checked mode. Profile builds (runtime/counters.hpp) are unoptimised
and instrumented so that every memory access the source makes is counted. Several processes may build the same key at once: a file lock
serialises them, and the result is written to a temporary name and renamed into place.
"""
import fcntl
import functools
import hashlib
import os
import pathlib
import subprocess
import tempfile

from .errors import CompileError
from .launchers import launcher_source
from .translate import translate

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
SHIM_DIR = PACKAGE_DIR / "shim"
RUNTIME_DIR = PACKAGE_DIR / "runtime"
CHECKS = (None, "bounds", "races")
# What Apple's compiler predefines for MSL 3.1 that kernels test with #if.
MSL_MACROS = {"__METAL_VERSION__": "310", "__METAL__": "1", "__HAVE_BFLOAT__": "1", "__HAVE_SIMDGROUP_MATRIX__": "1"}


def cache_dir():
    path = pathlib.Path(os.environ.get("MFA_TORCH_CACHE") or pathlib.Path.home() / ".cache" / "mfa_torch" / "emulator")
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def shim_version():
    digest = hashlib.sha256()
    for root in (SHIM_DIR, RUNTIME_DIR):
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix != ".py":
                digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _cpu_flags():
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(flags_line.split(":", 1)[-1].split())


# Profile builds: -O0, so that the counted accesses are the source's, whatever g++ version optimises them; the
# ThreadSanitizer instrumentation supplies a callback per access (no sanitizer runtime is linked).
PROFILE_FLAGS = ["-O0", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-DMSL_PROFILE"]


def compiler_flags(checks, fast_math=False, profile=False):
    """g++ flags of a build. fast_math: -ffast-math over the kernel code (and the shim it inlines), as Metal's fast
    math mode (PYTORCH_MPS_FAST_MATH=1) lets Apple's compiler assume that no value is NaN or infinite: comparisons
    with -INFINITY, isinf/isnan and 0 * x may be folded, max/min need not honour NaN operands."""
    flags = [
        "-std=c++20", "-g1", "-fPIC", "-fno-strict-aliasing",
        "-fsingle-precision-constant",  # MSL has no double: 1.0 is a float
        "-ffp-contract=off",  # no fused multiply-adds the source did not ask for
        # half (_Float16) rounds after every operation, as on the GPU. g++ 13 made -fexcess-precision=standard the
        # C++ default, which would evaluate half expressions in float and round once: pinned, not left to the default.
        "-fexcess-precision=16",
        "-Wno-attributes", "-fdiagnostics-color=never", "-I", str(SHIM_DIR),
    ]
    if fast_math:
        flags.insert(0, "-ffast-math")  # first: the pinned flags after it (fp-contract, excess precision) still hold
    flags += [f"-m{f}" for f in ("f16c", "fma") if f in _cpu_flags()]
    if checks == "bounds":
        flags += ["-O1", "-fsanitize=address", "-fno-omit-frame-pointer", "-DMSL_CHECK_BOUNDS"]
    elif checks == "races":
        flags += ["-O1", "-fsanitize=thread", "-DMSL_CHECK_RACES"]
    elif profile:
        flags += PROFILE_FLAGS + ["-shared"]
    else:
        flags += ["-O2", "-shared"]
    return flags


def _macro_flags(defines):
    if defines is None:
        return []
    if isinstance(defines, (list, tuple, set)):
        defines = {name: None for name in defines}
    if not isinstance(defines, dict):
        raise TypeError("defines must be a dict {name: value or None} or a list of names")
    flags = []
    for name, value in defines.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"defines: {name!r} is not a macro name")
        flags.append(f"-D{name}" if value is None else f"-D{name}={'1' if value is True else '0' if value is False else value}")
    return flags


def preprocess(text, filename, defines, include_dirs):
    """g++ -E over the kernel source with the shim emptied: expands only the source's macros and includes."""
    if isinstance(include_dirs, (str, os.PathLike)):
        include_dirs = [include_dirs]
    command = ["g++", "-E", "-x", "c++", "-std=c++20", "-DMSL_EMULATOR_PREPROCESS", "-I", str(SHIM_DIR)]
    command += [f"-D{k}={v}" for k, v in MSL_MACROS.items()]
    if os.path.isfile(filename):  # `#include "x.h"` looks next to the source first, as Apple's compiler does
        command += ["-iquote", os.path.dirname(filename)]
    for d in include_dirs:
        command += ["-I", os.path.abspath(d)]
    command += _macro_flags(defines)
    command += ["-"]
    result = subprocess.run(command, input=text, capture_output=True, text=True)
    stderr = result.stderr.replace("<stdin>", filename)
    if result.returncode != 0:
        raise CompileError(f"preprocessing {filename} failed:\n{_trim(stderr)}")
    return result.stdout.replace('"<stdin>"', '"' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"')


def _trim(text, lines=60):
    kept = text.strip().splitlines()
    return "\n".join(kept[:lines] + ([f"... ({len(kept) - lines} more lines)"] if len(kept) > lines else []))


def build(text, filename, *, defines=None, function_constants=None, include_dirs=(), checks=None, fast_math=False,
          profile=False):
    """Returns (artefact path, Translation). The artefact is a shared library, or for checked modes an
    executable that runs one launch described on its command line. profile: a build that counts its work."""
    if checks not in CHECKS:
        raise ValueError(f"checks must be one of {CHECKS}, got {checks!r}")
    if not isinstance(fast_math, bool):
        raise TypeError(f"fast_math must be True or False, got {fast_math!r}")
    if not isinstance(profile, bool):
        raise TypeError(f"profile must be True or False, got {profile!r}")
    if profile and checks:
        raise ValueError("profile builds run unchecked: pass checks=None with profile=True")
    translation = translate(preprocess(text, filename, defines, include_dirs), function_constants, count_divisions=profile)
    unit = "#include <metal_stdlib>\n" + translation.text + "\n" + launcher_source(translation.kernels)
    if checks:
        unit += '#include "../runtime/checked_main.hpp"\n'
    flags = compiler_flags(checks, fast_math, profile)
    key = hashlib.sha256("\0".join([unit, shim_version(), " ".join(flags), str(checks)]).encode()).hexdigest()[:24]
    artefact = cache_dir() / (f"{key}.so" if checks is None else f"{key}-{checks}")
    _build_once(artefact, lambda tmp: _compile(unit, flags, tmp / artefact.name))
    return artefact, translation


def _build_once(artefact, make):
    """Create `artefact` with make(temporary directory) -> built file, once across concurrent processes."""
    if artefact.exists():
        return
    with open(artefact.parent / (artefact.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if artefact.exists():
            return
        with tempfile.TemporaryDirectory(dir=artefact.parent, prefix="build-") as tmp:
            os.replace(make(pathlib.Path(tmp)), artefact)


def _prebuilt(flags):
    """A directory holding, for these flags, the shim precompiled (metal_stdlib.gch: parsing its headers is a third
    of every compile; g++ picks the .gch up in the first -I directory) and the runtime's launch machinery compiled
    (runtime.o, runtime/definitions.cpp: its code generation was most of a small kernel's compile), each once."""
    key = hashlib.sha256("\0".join([shim_version(), " ".join(flags)]).encode()).hexdigest()[:16]
    directory = cache_dir() / f"pch-{key}"
    directory.mkdir(exist_ok=True)

    def make(source, mode, name):
        def run(tmp):
            output = tmp / name
            result = subprocess.run(["g++", *flags, *mode, str(source), "-o", str(output)], capture_output=True, text=True)
            if result.returncode != 0:
                raise CompileError(f"the emulator's {source.name} does not compile:\n{_trim(_relevant(result.stderr))}")
            return output
        return run

    _build_once(directory / "metal_stdlib.gch", make(SHIM_DIR / "metal_stdlib", ["-x", "c++-header"], "metal_stdlib.gch"))
    _build_once(directory / "runtime.o", make(RUNTIME_DIR / "definitions.cpp", ["-c"], "runtime.o"))
    return directory


def _compile(unit, flags, output):
    source = output.with_name("unit.cpp")
    source.write_text(unit)
    prebuilt = _prebuilt([f for f in flags if f != "-shared"])
    precompiled = ["-I", str(prebuilt)]
    libraries = [str(prebuilt / "runtime.o"), "-lpthread", "-ldl", "-lrt"]
    if "-DMSL_PROFILE" in flags:  # compiled instrumented, linked without the sanitizer's runtime
        objects = output.with_name("unit.o")
        commands = [["g++", *precompiled, *[f for f in flags if f != "-shared"], "-c", str(source), "-o", str(objects)],
                    ["g++", "-shared", str(objects), "-o", str(output), *libraries]]
    else:
        commands = [["g++", *precompiled, *flags, str(source), "-o", str(output), *libraries]]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"the kernel source does not compile under the emulator:\n{_trim(_relevant(result.stderr))}")
    return output


def _relevant(stderr):
    """Compiler output without the 'In file included from' chains of the shim."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith(("In file included from", "                 from")))
