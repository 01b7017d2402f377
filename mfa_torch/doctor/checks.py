"""The doctor's checks, in the order they run: each a name and a function that raises on failure (and may return
a short note for its ok line)."""
import functools

import torch

from .. import _C
from . import compile_variants, lane_layout, sweep


def route():
    """Where the checks run the Metal kernels: "metal" (the MPS device) when PyTorch sees an Apple GPU, else
    "emulator" (the MSL emulator on the CPU)."""
    return "metal" if torch.backends.mps.is_available() else "emulator"


def _executor_built():
    if not _C.has_mps_executor():
        raise RuntimeError("this build of mfa_torch has no MPS executor (it is compiled only when mfa_torch is built "
                           "on macOS): reinstall mfa_torch on this Mac")


def planned(route, quick):
    """[(name, function)] for `route`; quick: no compile-every-variant check, float16 only in the sweep."""
    checks = [("MPS executor in this build", _executor_built)] if route == "metal" else []
    checks.append(("lane-layout self-test (simdgroup_load, thread_elements, simdgroup_multiply_accumulate)",
                   functools.partial(lane_layout.check, route)))
    if not quick:
        checks.append(("compile every planned shader variant", functools.partial(compile_variants.compile_all, route)))
    checks += [(name, functools.partial(sweep.compare, case, dtype, route)) for name, case, dtype in sweep.cases(quick)]
    return checks
