"""emulator.profile() over mfa_torch's Metal route: every launch recorded with its variant and family, results equal
to the optimised build's, and MMA counts equal to the product's 8x8x8 tiles where the blocks divide the shape."""
import pytest
import torch

from mfa_torch.emulator import profile
from mfa_torch.metal import attention as metal_attention
from mfa_torch.metal import executors
from mfa_torch.metal import gemm as metal_gemm

pytestmark = pytest.mark.emulator
ROUTE = "emulator"


def _attention_args(L, S, scale, left=-1, right=-1, softcap=0.0, dropout=0.0, alibi=None, mask=None):
    return (mask, alibi, None, None, L, S, scale, left, right, False, softcap, dropout, torch.tensor([1234, 0]))


@pytest.mark.parametrize("family", ["apple7", "apple9"])
def test_forward_mma_count_is_the_products_tiles(family):
    B, H, L, S, E, Ev = 1, 2, 64, 256, 64, 32  # S: a multiple of every key block
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, H, n, E, generator=gen).half() for n in (L, S))
    v = torch.randn(B, H, S, Ev, generator=gen).half()
    with profile() as prof:
        metal_attention.forward(ROUTE, q, k, v, *_attention_args(L, S, E ** -0.5), family=family)
    (launch,) = prof.launches
    # per (8 rows, 8 keys): E / 8 MMAs for the scores and Ev / 8 for the output
    assert launch["mma"] == B * H * (L // 8) * (S // 8) * (E // 8 + Ev // 8)
    assert launch["kernel"] == "attention_forward" and launch["family"] == family
    problem_defines = dict(launch["defines"])
    assert problem_defines["MFA_HEAD_DIM"] == str(E) and problem_defines["MFA_VALUE_DIM"] == str(Ev)


@pytest.mark.parametrize("family", ["apple7", "apple9"])
def test_gemm_mma_count_is_the_products_tiles(family):
    n = 128  # a multiple of every family's block: no edge tile multiplies zeros
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1, n, n, generator=gen) for _ in range(2))
    with profile() as prof:
        c = metal_gemm.gemm(ROUTE, a, b, None, family=family)
    assert [launch["kernel"] for launch in prof.launches] == ["gemm"]
    assert prof.launches[0]["mma"] == (n // 8) ** 3
    assert prof.launches[0]["mma_by_type"] == {"float*float+float->float": (n // 8) ** 3}
    assert torch.allclose(c.double(), a.double() @ b.double(), atol=1e-4)


def test_profiled_kernels_compute_what_the_optimised_build_computes():
    """Every feature at once, forward and backward: the profile build (unoptimised, divisions rewritten for
    counting, half as a counted class) must change nothing the kernels compute."""
    B, H, L, S, E = 1, 2, 40, 72, 64
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, L, E, generator=gen).half()
    k, v = (torch.randn(B, H, S, E, generator=gen).half() for _ in range(2))
    mask = torch.randn(B, H, L, S, generator=gen).half()
    alibi = torch.rand(B, H, generator=gen)
    args = _attention_args(L, S, E ** -0.5, left=30, right=5, softcap=20.0, dropout=0.25, alibi=alibi, mask=mask)
    plain_out, plain_stats = metal_attention.forward(ROUTE, q, k, v, *args)
    grad = torch.randn_like(plain_out)
    plain_grads = metal_attention.backward(ROUTE, grad, q, k, v, plain_out, plain_stats, *args, False)
    with profile() as prof:
        out, stats = metal_attention.forward(ROUTE, q, k, v, *args)
        grads = metal_attention.backward(ROUTE, grad, q, k, v, out, stats, *args, False)
    assert torch.equal(out, plain_out) and torch.equal(stats, plain_stats)
    for g, plain in zip(grads[:3], plain_grads[:3]):
        assert torch.equal(g, plain)
    kernels = [launch["kernel"] for launch in prof.launches]
    assert kernels[0] == "attention_forward" and {"attention_backward_dq", "attention_backward_dkdv"} <= set(kernels)
    assert all(launch["family"] == executors.gpu_family(ROUTE) for launch in prof.launches)
    assert all(launch["transcendentals"] > 0 for launch in prof.launches if launch["kernel"] in kernels[:1] + [
        "attention_backward_dq", "attention_backward_dkdv"])
