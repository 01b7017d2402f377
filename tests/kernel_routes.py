"""The two routes that run the shipped Metal kernels, as a pytest parameter: "emulator" (CPU tensors, the MSL
emulator; runs everywhere) and "metal" (MPS tensors on a real Apple GPU; marked `mps`, skipped elsewhere).

MFA_TORCH_FULL_MATRIX=1 runs every case of the kernel matrices instead of the default covering subset.
"""
import contextlib
import os

import pytest
import torch

import mfa_torch
from oracle import make_inputs

KERNEL_ROUTES = [pytest.param("emulator", marks=pytest.mark.emulator, id="emulator"),
                 pytest.param("metal", marks=pytest.mark.mps, id="metal")]
DEVICE = {"emulator": "cpu", "metal": "mps"}
FULL_MATRIX = os.environ.get("MFA_TORCH_FULL_MATRIX") == "1"


def recorded_plans(monkeypatch):
    """A list that collects every launch plan the Metal route runs from now on (undone with the test's monkeypatch)."""
    from mfa_torch.metal import executors
    plans = []
    real_run = executors.run

    def recording_run(route, plan, tensors, checks=None, family=None):
        plans.append(plan)
        return real_run(route, plan, tensors, checks, family)

    monkeypatch.setattr(executors, "run", recording_run)
    return plans


@contextlib.contextmanager
def kernel_route(route):
    """Selects the route's backend; yields the device its tensors live on."""
    with mfa_torch.backend(route):
        yield DEVICE[route]


@pytest.fixture(autouse=True, params=["reference"] + (["auto"] if FULL_MATRIX else []))
def matrix_backend(request):
    """For the API feature matrices (imported by their test modules): they run on mfa_torch's reference
    kernels, since on a CPU "auto" gives what PyTorch's SDPA lacks to PyTorch's own paths (tests/test_pytorch_paths.py
    checks those); MFA_TORCH_FULL_MATRIX=1 runs them on "auto" too."""
    with mfa_torch.backend(request.param):
        yield


def log_sum_exp(stats):
    """The log-sum-exp (float64) of the ops' softmax stats (..., 2) = (max, sum): max + log(sum), -inf with no keys."""
    row_max, row_sum = stats.double().unbind(-1)
    return torch.where(row_sum > 0, row_max + row_sum.log(), torch.full_like(row_max, float("-inf")))


def with_dtypes(values, dtypes):
    """(value, dtype) cases: every pair under MFA_TORCH_FULL_MATRIX=1, else each value once with the dtypes in
    rotation (every value and every dtype still appears)."""
    if FULL_MATRIX:
        return [(v, d) for v in values for d in dtypes]
    return [(v, dtypes[i % len(dtypes)]) for i, v in enumerate(values)]


def varlen_case(dtype):
    """Packed sequences (with an empty one, a single token and keys longer than queries) for the varlen tests:
    (max_seqlen_q, max_seqlen_k, cu_seqlens_q, cu_seqlens_k, inputs q (total_q, 4, 32), k/v (total_k, 2, 32))."""
    lengths_q, lengths_k = [5, 0, 17, 1, 9], [8, 3, 17, 40, 2]
    cu_q = torch.tensor([0] + lengths_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lengths_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    inputs = make_inputs({"q": (int(cu_q[-1]), 4, 32), "k": (int(cu_k[-1]), 2, 32), "v": (int(cu_k[-1]), 2, 32)},
                         dtype, seed=11)
    return max(lengths_q), max(lengths_k), cu_q, cu_k, inputs
