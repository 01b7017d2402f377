"""MSL emulator: runs the project's Metal kernels on Linux CPUs with Metal's execution model, strictly.

    lib = compile(source, defines=None, function_constants=None, include_dirs=(), checks=None, fast_math=False,
                  profile=False)
    lib.kernel_names
    lib.dispatch(name, {0: tensor, 1: ctypes.c_uint32(n)}, threadgroups, threads_per_threadgroup,
                 threadgroup_memory={0: nbytes}, strict=True, os_threads=None, timeout=None)
    lib.dispatch_threads(name, buffers, threads, threads_per_threadgroup, ...same keywords)
    lib.last_sync_points  # barrier and SIMD-group arrivals of the last dispatch

    with profile() as prof: ...  # prof.launches: the work counters of every launch (emulator/counters.py)

Kernel errors (divergent barriers, partial SIMD-group functions, threadgroup memory over 32 KiB, more
than 1024 threads, wild pointers, time-outs; with checks="bounds" out-of-bounds accesses, with
checks="races" data races) raise KernelError naming the .metal file and line. Mistakes in the Python
arguments raise ValueError / TypeError. See the README, "Testing Metal kernels without a Mac".
"""
import os
import pathlib

from .checked import CheckedLibrary
from .compiler import build
from .errors import CompileError, KernelError
from .library import Library
from .counters import profile

__all__ = ["compile", "profile", "KernelError", "CompileError"]


def _read_source(source, filename):
    is_path = isinstance(source, str) and "\n" not in source and (source.endswith(".metal") or os.path.isfile(source))
    if isinstance(source, os.PathLike) or is_path:
        path = pathlib.Path(source).resolve()
        return path.read_text(), str(path)
    if not isinstance(source, str):
        raise TypeError(f"source must be MSL text or a path to a .metal file, got {type(source).__name__}")
    return source, filename


def compile(source, *, defines=None, function_constants=None, include_dirs=(), checks=None, fast_math=False,
            profile=False, filename="<msl source>"):
    """Compile MSL (text, or a path to a .metal file) for the CPU.

    defines: {macro: value or None}; function_constants: {name or index: value};
    include_dirs: directories searched by #include; checks: None, "bounds" (out-of-bounds device
    accesses) or "races" (data races between threads of a threadgroup); fast_math: compile as Metal's
    fast math mode may (MTLCompileOptions.mathMode = .fast): g++ -ffast-math, so code that relies on
    IEEE infinities or NaN in comparisons can fail; profile: a build that counts its work (emulator/counters.py;
    unoptimised, so slower); filename: the name diagnostics use for MSL given as text."""
    text, name = _read_source(source, filename)
    artefact, translation = build(text, name, defines=defines, function_constants=function_constants,
                                  include_dirs=include_dirs, checks=checks, fast_math=fast_math, profile=profile)
    if checks is None:
        return Library(artefact, translation, name, defines, profile)
    return CheckedLibrary(artefact, translation, name, checks)
