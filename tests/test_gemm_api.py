"""mfa_torch.matmul / mfa_torch.linear against an fp64 broadcast-multiply-sum oracle (tests/oracle.py).

Semantics must be exactly torch.matmul's / torch.nn.functional.linear's (shapes, 1-D promotion rules,
batch broadcasting); values within the tolerance rule against torch's own matmul in the same dtype;
gradients of every operand (and bias), reduced correctly over broadcast batch dims.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import DT_IDS, DTYPES, check_against_oracle, linear_fp64, make_inputs, matmul_fp64, max_err

import mfa_torch  # noqa: E402


def matmul_check(sa, sb, dtype, seed=0):
    inputs = make_inputs({"a": sa, "b": sb}, dtype, seed=seed)
    torch_fn = (lambda t: torch.matmul(t["a"], t["b"])) if dtype != torch.float64 else None
    out, ref = check_against_oracle(lambda t: mfa_torch.matmul(t["a"], t["b"]),
                                    lambda t: matmul_fp64(t["a"], t["b"]),
                                    torch_fn, inputs, dtype)
    expected_shape = torch.matmul(torch.empty(sa), torch.empty(sb)).shape
    assert out.shape == expected_shape, f"shape {tuple(out.shape)} != torch's {tuple(expected_shape)}"
    return out


MATMUL_SHAPES = [
    ((7,), (7,)),  # dot -> 0-D
    ((5,), (5, 3)),  # vector-matrix
    ((4, 5), (5,)),  # matrix-vector
    ((4, 5), (5, 3)),  # mm
    ((1, 1), (1, 1)),
    ((33, 17), (17, 9)),  # sizes not multiples of any block
    ((2, 4, 5), (5, 3)),  # batched x matrix
    ((4, 5), (2, 5, 3)),  # matrix x batched
    ((2, 4, 5), (2, 5, 3)),  # bmm
    ((2, 1, 4, 5), (3, 5, 6)),  # broadcast batch dims
    ((1, 4, 5), (3, 5, 6)),
    ((3, 4, 5), (1, 5, 6)),
    ((2, 3, 4, 5), (5,)),  # N-D x vector
    ((5,), (2, 3, 5, 4)),  # vector x N-D
    ((2, 0, 5), (5, 3)),  # empty batch rows
    ((4, 0), (0, 3)),  # K = 0 -> zeros
    ((0, 5), (5, 3)),
    ((4, 5), (5, 0)),
    ((0,), (0,)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=lambda s: f"{s[0]}@{s[1]}".replace(" ", ""))
def test_matmul(shapes, dtype):
    out = matmul_check(shapes[0], shapes[1], dtype, seed=len(shapes[0]) * 10 + len(shapes[1]))
    if 0 in shapes[0][-1:] and len(shapes[1]) >= 1:
        assert (out == 0).all()


def test_matmul_fp64_smoke():
    matmul_check((2, 3, 4), (4, 5), torch.float64)
    matmul_check((6,), (6,), torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_matmul_large_k_accumulation(dtype):
    """K = 1000: fp32 accumulation keeps low-precision results within the rule."""
    matmul_check((8, 1000), (1000, 6), dtype, seed=3)


def test_matmul_non_contiguous_operands():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 5, generator=g).transpose(-1, -2)  # (3, 5, 6) transposed view
    b = torch.randn(8, 6, generator=g)[::2]  # (4, 6) strided rows
    b = b.t()  # (6, 4)
    out = mfa_torch.matmul(a, b)
    assert max_err(out, matmul_fp64(a, b)) < 1e-5
    e = torch.randn(1, 5, 6, generator=g).expand(3, 5, 6)  # expanded (stride 0) batch
    out = mfa_torch.matmul(e, b)
    assert max_err(out, matmul_fp64(e, b)) < 1e-5


def test_matmul_broadcast_gradient_reduction():
    """Gradient of a broadcast operand is summed over the broadcast batch dims, shaped like the operand."""
    a = torch.randn(1, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    out = mfa_torch.matmul(a, b)
    ga, gb = torch.autograd.grad(out.sum(), [a, b])
    a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
    ra, rb = torch.autograd.grad(matmul_fp64(a2, b2).sum(), [a2, b2])
    assert ga.shape == a.shape and gb.shape == b.shape
    assert max_err(ga, ra) < 1e-10 and max_err(gb, rb) < 1e-10


LINEAR_SHAPES = [
    # x, weight (out, in), bias?
    ((5,), (3, 5), True),  # 1-D input
    ((4, 5), (3, 5), True),
    ((4, 5), (3, 5), False),
    ((2, 3, 4, 5), (7, 5), True),  # N-D input
    ((2, 0, 5), (3, 5), True),  # empty rows
    ((4, 40), (72, 40), True),  # odd sizes
    ((4, 0), (3, 0), True),  # in_features = 0 -> bias broadcast
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shapes", LINEAR_SHAPES, ids=lambda s: f"x{s[0]}w{s[1]}b{int(s[2])}".replace(" ", ""))
def test_linear(shapes, dtype):
    sx, sw, has_bias = shapes
    names = {"x": sx, "w": sw}
    if has_bias:
        names["b"] = (sw[0],)
    inputs = make_inputs(names, dtype, seed=1)
    out, _ = check_against_oracle(lambda t: mfa_torch.linear(t["x"], t["w"], t.get("b")),
                                  lambda t: linear_fp64(t["x"], t["w"], t.get("b")),
                                  lambda t: F.linear(t["x"], t["w"], t.get("b")), inputs, dtype)
    assert out.shape == F.linear(torch.empty(sx), torch.empty(sw), None).shape


def test_linear_bias_keyword_and_positional():
    x, w, b = torch.randn(4, 5), torch.randn(3, 5), torch.randn(3)
    a1 = mfa_torch.linear(x, w, b)
    a2 = mfa_torch.linear(x, w, bias=b)
    a3 = mfa_torch.linear(input=x, weight=w, bias=b)
    assert torch.equal(a1, a2) and torch.equal(a1, a3)
    assert max_err(a1, linear_fp64(x, w, b)) < 1e-5


def test_linear_fp64_smoke():
    inputs = make_inputs({"x": (3, 4), "w": (2, 4), "b": (2,)}, torch.float64)
    check_against_oracle(lambda t: mfa_torch.linear(t["x"], t["w"], t["b"]),
                         lambda t: linear_fp64(t["x"], t["w"], t["b"]), None, inputs, torch.float64)


def test_linear_non_contiguous_weight():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=g)
    w = torch.randn(6, 3, generator=g).t()  # (3, 6) transposed view, like a tied embedding
    out = mfa_torch.linear(x, w)
    assert max_err(out, linear_fp64(x, w)) < 1e-5


@st.composite
def matmul_pair(draw):
    ra = draw(st.integers(1, 4))
    rb = draw(st.integers(1, 4))
    M, K, N = draw(st.integers(0, 5)), draw(st.integers(0, 5)), draw(st.integers(0, 5))
    nb = max(ra, rb) - 2
    batch = [draw(st.integers(0, 3)) for _ in range(max(nb, 0))]

    def bdims(r):
        k = max(r - 2, 0)
        dims = batch[len(batch) - k:] if k else []
        return [1 if draw(st.booleans()) else d for d in dims]

    sa = (K,) if ra == 1 else tuple(bdims(ra)) + (M, K)
    sb = (K,) if rb == 1 else tuple(bdims(rb)) + (K, N)
    return sa, sb, draw(st.integers(0, 2 ** 16))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matmul_pair())
def test_hypothesis_matmul_shapes(pair):
    sa, sb, seed = pair
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(sa, generator=g, requires_grad=True)
    b = torch.randn(sb, generator=g, requires_grad=True)
    try:
        expected = torch.matmul(a, b)
    except RuntimeError:
        with pytest.raises((ValueError, TypeError, RuntimeError)):
            mfa_torch.matmul(a, b)
        return
    out = mfa_torch.matmul(a, b)
    assert out.shape == expected.shape
    ref = matmul_fp64(a, b)
    assert max_err(out, ref) <= 1e-5 * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    if out.numel():
        ga, gb = torch.autograd.grad(out.sum(), [a, b])
        ea, eb = torch.autograd.grad(expected.sum(), [a, b])
        assert ga.shape == a.shape and gb.shape == b.shape
        assert max_err(ga, ea) < 1e-4 and max_err(gb, eb) < 1e-4
