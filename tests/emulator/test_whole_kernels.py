"""Whole kernels written like the project's (tiled simdgroup_matrix GEMM, online-softmax attention),
run by the emulator and compared with fp64 references computed by torch."""
import ctypes
import math

import pytest
import torch

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def lib(compile_kernels):
    return compile_kernels("whole_kernels.metal")


@pytest.mark.parametrize("m,n,k", [(64, 64, 64), (72, 40, 48), (8, 100, 16)])
def test_tiled_gemm_matches_fp64(lib, m, n, k):
    gen = torch.Generator().manual_seed(m * n + k)
    a = torch.randn(m, k, generator=gen).half()
    b = torch.randn(k, n, generator=gen).half()
    c = torch.full((m, n), float("nan"))
    dims = (ctypes.c_uint32 * 4)(m, n, k, 0)  # uint3 occupies 16 bytes
    lib.dispatch("gemm_half", {0: a, 1: b, 2: c, 3: dims}, (-(-n // 32), -(-m // 32)), (128,))
    reference = a.double() @ b.double()
    # half inputs are exact in float; the error is float accumulation over k terms
    assert torch.allclose(c.double(), reference, rtol=0, atol=1e-5 * k)


class AttentionParams(ctypes.Structure):
    _fields_ = [("L", ctypes.c_uint32), ("S", ctypes.c_uint32), ("scale", ctypes.c_float)]


def attention_reference(q, k, v, scale):
    """Causal attention in fp64 (query i sees keys 0..i) and its natural log-sum-exp per row."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    length, keys = scores.shape[-2:]
    mask = torch.arange(keys)[None, :] > torch.arange(length)[:, None]
    scores = scores.masked_fill(mask, -math.inf)
    return torch.softmax(scores, dim=-1) @ v.double(), torch.logsumexp(scores, dim=-1)


@pytest.mark.parametrize("heads,length,keys", [(2, 64, 64), (1, 40, 72), (3, 24, 24)])
def test_online_softmax_attention_matches_fp64(lib, heads, length, keys):
    gen = torch.Generator().manual_seed(heads * 1000 + length)
    dim = 32
    q = torch.randn(heads, length, dim, generator=gen).half()
    k = torch.randn(heads, keys, dim, generator=gen).half()
    v = torch.randn(heads, keys, dim, generator=gen).half()
    o = torch.full((heads, length, dim), float("nan"))
    lse = torch.full((heads, length), float("nan"))
    scale = dim**-0.5
    params = AttentionParams(length, keys, scale)
    lib.dispatch("attention_causal", {0: q, 1: k, 2: v, 3: o, 4: lse, 5: params}, (-(-length // 16), heads), (64,))
    ref_o, ref_lse = attention_reference(q, k, v, scale)
    assert torch.allclose(o.double(), ref_o, rtol=0, atol=2e-5)
    assert torch.allclose(lse.double(), ref_lse, rtol=0, atol=2e-5)
