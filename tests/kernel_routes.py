"""The two routes that run the shipped Metal kernels, as a pytest parameter: "emulator" (CPU tensors, the MSL
emulator; runs everywhere) and "metal" (MPS tensors on a real Apple GPU; marked `mps`, skipped elsewhere).

MFA_TORCH_FULL_MATRIX=1 runs every case of the kernel matrices instead of the default covering subset.
"""
import contextlib
import os

import pytest

import mfa_torch

KERNEL_ROUTES = [pytest.param("emulator", marks=pytest.mark.emulator, id="emulator"),
                 pytest.param("metal", marks=pytest.mark.mps, id="metal")]
DEVICE = {"emulator": "cpu", "metal": "mps"}
FULL_MATRIX = os.environ.get("MFA_TORCH_FULL_MATRIX") == "1"


@contextlib.contextmanager
def kernel_route(route):
    """Selects the route's backend; yields the device its tensors live on."""
    with mfa_torch.backend(route):
        yield DEVICE[route]


def with_dtypes(values, dtypes):
    """(value, dtype) cases: every pair under MFA_TORCH_FULL_MATRIX=1, else each value once with the dtypes in
    rotation (every value and every dtype still appears)."""
    if FULL_MATRIX:
        return [(v, d) for v in values for d in dtypes]
    return [(v, dtypes[i % len(dtypes)]) for i, v in enumerate(values)]
