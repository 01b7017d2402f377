"""Runs launch plans with the MSL emulator on CPU tensors: the plans and shaders the MPS executor runs on a GPU.

MFA_TORCH_EMULATOR_FAST_MATH=1 compiles the shaders in the emulator's fast-math mode (g++ -ffast-math), as Apple's
compiler may under PYTORCH_MPS_FAST_MATH=1; read at each launch, so tests can switch it per test. Inside an
`emulator.profile()` block the shaders run as profile builds, which count their work.
"""
import os
import threading

from .. import emulator
from ..emulator import counters
from .shader_files import shader_dir

FAST_MATH_ENV = "MFA_TORCH_EMULATOR_FAST_MATH"
_lock = threading.Lock()
_libraries = {}  # (shader, defines, checks, fast_math, profile) -> compiled library
compilations = 0  # libraries compiled by this process (each variant once, also under concurrent calls)


def fast_math():
    """Whether $MFA_TORCH_EMULATOR_FAST_MATH selects the fast-math mode ("1"; "0" or unset: not)."""
    value = os.environ.get(FAST_MATH_ENV, "0")
    if value not in ("0", "1"):
        raise ValueError(f'environment variable {FAST_MATH_ENV} must be "0" or "1", got {value!r}')
    return value == "1"


def _library(launch, checks):
    global compilations
    key = (launch.shader, tuple(launch.defines), checks, fast_math(), counters.active())
    with _lock:  # one compilation per variant; the emulator's disk cache makes repeats across processes cheap
        library = _libraries.get(key)
        if library is None:
            directory = shader_dir()
            library = emulator.compile(directory / launch.shader, defines=dict(launch.defines),
                                       include_dirs=[directory], checks=checks, fast_math=key[3], profile=key[4])
            _libraries[key] = library
            compilations += 1
    return library


def _raw(tensor):
    """The memory a kernel reads through the tensor's strides, as one contiguous 1-D view (no copy)."""
    if tensor.is_contiguous():
        return tensor
    extent = 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
    return tensor.as_strided((extent,), (1,))


def run_plan(plan, table, checks=None, family=None):
    """table: {name: CPU tensor} for every name the plan binds; checks: None, "bounds" or "races"; family: the GPU
    family the plan is for (recorded in profiles)."""
    for launch in plan.launches:
        buffers = {a.index: (_raw(table[a.tensor]) if a.tensor else a.bytes) for a in launch.arguments}
        library = _library(launch, checks)
        with counters.planned_for(family):
            library.dispatch(launch.kernel, buffers, tuple(launch.threadgroups), tuple(launch.threads_per_threadgroup))
