"""mfa_torch.scaled_dot_product_attention against the fp64 oracle (tests/oracle.py).

Every check applies the tolerance rule of DESIGN section 7 (see oracle.py) to the output and to the
gradient of every input; the yardstick is PyTorch's own SDPA in the same dtype (with the features torch
lacks folded into a materialised float mask, or the composite math for softcap).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdpa_check import sdpa_check
from kernel_routes import log_sum_exp, matrix_backend  # noqa: F401  (matrix_backend: an autouse fixture)
from oracle import (
    DT_IDS,
    DTYPES,
    attention_fp64,
    assert_rule,
    check_against_oracle,
    make_inputs,
    max_err,
    torch_attention_same_dtype,
)

import mfa_torch  # noqa: E402


def qkv(B, Hq, Hk, L, S, E, Ev=None):
    Ev = E if Ev is None else Ev
    lead = (B,) if B is not None else ()
    return {"q": lead + (Hq, L, E), "k": lead + (Hk, S, E), "v": lead + (Hk, S, Ev)}


# ----------------------------------------------------------------------------------------------------
# the oracle itself agrees with torch in fp64 on the shared features (guards the guard)


@pytest.mark.parametrize("case", ["plain", "causal", "causal_wide", "causal_tall", "bool", "float", "gqa", "scale"])
def test_oracle_agrees_with_torch_fp64(case):
    g = torch.Generator().manual_seed(3)
    L, S = {"causal_wide": (5, 9), "causal_tall": (9, 5)}.get(case, (6, 7))
    Hk = 2 if case == "gqa" else 4
    q = torch.randn(2, 4, L, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, Hk, S, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, Hk, S, 5, generator=g, dtype=torch.float64)
    kw, okw = {}, {}
    if case.startswith("causal"):
        kw["is_causal"], okw["causal"] = True, "upper_left"
    if case == "bool":
        m = torch.rand(2, 1, L, S, generator=g) > 0.3
        m[..., 0] = True
        kw["attn_mask"] = okw["mask"] = m
    if case == "float":
        kw["attn_mask"] = okw["mask"] = torch.randn(L, S, generator=g, dtype=torch.float64)
    if case == "gqa":
        kw["enable_gqa"] = True
    if case == "scale":
        kw["scale"] = okw["scale"] = 0.37
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    out, lse = attention_fp64(q, k, v, **okw)
    assert max_err(out, ref) < 1e-12
    assert lse.shape == (2, 4, L)


# ----------------------------------------------------------------------------------------------------
# shapes: odd head dims, L != S both ways, 1-sizes, Ev != E, GQA


SHAPES = [
    # B, Hq, Hk, L, S, E, Ev
    (1, 1, 1, 1, 1, 1, 1),
    (2, 3, 3, 7, 9, 40, 40),
    (1, 2, 2, 13, 5, 72, 72),
    (1, 2, 1, 5, 13, 80, 24),
    (2, 4, 2, 17, 17, 96, 96),
    (1, 1, 1, 3, 33, 160, 160),
    (1, 2, 2, 33, 3, 192, 64),
    (1, 1, 1, 9, 11, 256, 256),
    (1, 4, 1, 1, 16, 64, 64),
    (1, 4, 4, 16, 1, 8, 8),
    (2, 8, 2, 10, 12, 16, 33),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes_forward_backward(shape, dtype):
    B, Hq, Hk, L, S, E, Ev = shape
    sdpa_check(qkv(B, Hq, Hk, L, S, E, Ev), dtype, seed=sum(shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", [(1, 2, 2, 7, 9, 40, 40), (2, 4, 2, 9, 5, 72, 24), (1, 4, 1, 12, 12, 80, 80),
                                   (1, 1, 1, 1, 6, 8, 8), (1, 2, 2, 6, 1, 8, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_causal_upper_left(shape, dtype):
    B, Hq, Hk, L, S, E, Ev = shape
    sdpa_check(qkv(B, Hq, Hk, L, S, E, Ev), dtype, is_causal=True, seed=7)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("ratio", [1, 2, 4, "mqa"])
def test_gqa_ratios(ratio, dtype):
    Hq = 8
    Hk = 1 if ratio == "mqa" else Hq // ratio
    sdpa_check(qkv(2, Hq, Hk, 6, 10, 16), dtype, enable_gqa=True, is_causal=True, seed=11)


def test_gqa_head_mapping_is_blocked_not_interleaved():
    """query head h uses kv head h // (Hq/Hk): make each kv head's values a distinct constant."""
    Hq, Hk = 6, 3
    q = torch.randn(1, Hq, 4, 8)
    k = torch.randn(1, Hk, 5, 8)
    v = torch.arange(Hk, dtype=torch.float32).view(1, Hk, 1, 1).expand(1, Hk, 5, 3).contiguous()
    out = mfa_torch.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    for h in range(Hq):
        assert torch.allclose(out[0, h], torch.full((4, 3), float(h // (Hq // Hk))), atol=1e-5), h


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_custom_scale(dtype):
    sdpa_check(qkv(1, 2, 2, 5, 7, 24), dtype, scale=0.05, seed=5)
    sdpa_check(qkv(1, 2, 2, 5, 7, 24), dtype, scale=1.3, is_causal=True, seed=6)


# ----------------------------------------------------------------------------------------------------
# leading dims: none (3-D), 2-D (torch accepts (L, E)), 5-D


@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (2, 1, 3)], ids=["3d", "4d", "5d", "6d"])
def test_leading_dims(lead):
    shapes = {"q": lead + (4, 5, 8), "k": lead + (4, 7, 8), "v": lead + (4, 7, 6)}
    out, _ = sdpa_check(shapes, torch.float32, is_causal=True, seed=2)
    assert out.shape == lead + (4, 5, 6)


def test_two_dim_input_like_torch():
    q, k, v = torch.randn(5, 8), torch.randn(7, 8), torch.randn(7, 3)
    ref_torch = F.scaled_dot_product_attention(q, k, v)  # torch accepts 2-D: (L, E)
    out = mfa_torch.scaled_dot_product_attention(q, k, v)
    assert out.shape == ref_torch.shape == (5, 3)
    ref, _ = attention_fp64(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))
    assert max_err(out, ref[0]) < 1e-5


def test_lse_shape_for_3d_input():
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 7, 8), torch.randn(3, 7, 8)
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert out.shape == (3, 5, 8) and lse.shape == (3, 5) and lse.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# masks: bool and float, broadcast shapes, fully masked rows, float-mask gradient


MASK_SHAPES = {
    "LS": lambda B, H, L, S: (L, S),
    "11LS": lambda B, H, L, S: (1, 1, L, S),
    "B1LS": lambda B, H, L, S: (B, 1, L, S),
    "1H1S": lambda B, H, L, S: (1, H, 1, S),
    "BHLS": lambda B, H, L, S: (B, H, L, S),
    "1S": lambda B, H, L, S: (1, S),
    "S": lambda B, H, L, S: (S,),
    "scalar": lambda B, H, L, S: (),
    "L1": lambda B, H, L, S: (L, 1),
    "B111": lambda B, H, L, S: (B, 1, 1, 1),
}


def _mask(shape, kind, seed, fully_masked_row=False):
    g = torch.Generator().manual_seed(seed)
    if kind == "bool":
        m = torch.rand(shape, generator=g) > 0.35
    else:
        m = torch.randn(shape, generator=g, dtype=torch.float64)
        drop = torch.rand(shape, generator=g) < 0.2
        m = m.masked_fill(drop, float("-inf"))
    if fully_masked_row and len(shape) >= 2 and shape[-2] > 1:
        m = m.clone()
        m[..., 1, :] = False if kind == "bool" else float("-inf")
    return m


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mshape", list(MASK_SHAPES))
def test_broadcast_masks(mshape, kind, dtype):
    B, H, L, S = 2, 3, 6, 9
    shp = MASK_SHAPES[mshape](B, H, L, S)
    sdpa_check(qkv(B, H, H, L, S, 16), dtype, mask=_mask(shp, kind, seed=len(shp)), seed=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mshape", ["LS", "B1LS", "BHLS"])
def test_fully_masked_rows_zero_not_nan(mshape, kind, dtype):
    B, H, L, S = 2, 2, 5, 7
    shp = MASK_SHAPES[mshape](B, H, L, S)
    m = _mask(shp, kind, seed=9, fully_masked_row=True)
    out, _ = sdpa_check(qkv(B, H, H, L, S, 16), dtype, mask=m, return_lse=True, seed=4)
    assert not torch.isnan(out).any()
    assert (out[..., 1, :] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_all_rows_masked(dtype):
    m = torch.zeros(4, 6, dtype=torch.bool)
    out, _ = sdpa_check(qkv(1, 2, 2, 4, 6, 8), dtype, mask=m, return_lse=True)
    assert (out == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("mshape", ["LS", "11LS", "B1LS", "1H1S", "BHLS"])
def test_float_mask_gradient(mshape, dtype):
    B, H, L, S = 2, 2, 5, 6
    shp = MASK_SHAPES[mshape](B, H, L, S)
    m = torch.randn(shp, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sdpa_check(qkv(B, H, H, L, S, 8), dtype, mask=m, mask_grad=True, seed=8)


def test_float_mask_gradient_with_masked_entries_and_gqa():
    m = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    m[0, 0, 2, :] = float("-inf")  # a fully masked row: gradient 0, no NaN
    m[1, 0, :, 3] = float("-inf")
    sdpa_check(qkv(2, 4, 2, 5, 6, 8), torch.float32, mask=m, mask_grad=True, enable_gqa=True, seed=12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_gqa_with_float_mask(dtype):
    m = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    sdpa_check(qkv(1, 4, 2, 3, 3, 8), dtype, mask=m, enable_gqa=True)


# ----------------------------------------------------------------------------------------------------
# extras: window, alibi, softcap, return_lse


WINDOWS = [(2, 0), (0, 2), (3, 3), (-1, 1), (1, -1), (0, 0), (-1, -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("LS", [(8, 8), (5, 11), (11, 5)], ids=str)
def test_window(LS, window, dtype):
    L, S = LS
    sdpa_check(qkv(1, 2, 2, L, S, 16), dtype, window_size=window, return_lse=True, seed=L * S)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("window", [(2, 3), (-1, 5), (3, -1)], ids=str)
def test_window_with_causal_caps_right_at_zero(window, dtype):
    sdpa_check(qkv(1, 2, 1, 9, 12, 16), dtype, window_size=window, is_causal=True, enable_gqa=True, seed=1)


def test_window_right_is_capped_by_causal_exactly():
    """is_causal + window (w, 5) must equal window (w, 0) alone."""
    q, k, v = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    a = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True, window_size=(3, 5))
    b = mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(3, 0))
    assert max_err(a, b) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_window_with_mask(dtype):
    m = _mask((2, 1, 7, 9), "bool", seed=2)
    sdpa_check(qkv(2, 2, 2, 7, 9, 16), dtype, window_size=(2, 1), mask=m, return_lse=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("slopes_shape", ["H", "BH"])
@pytest.mark.parametrize("causal", [False, True])
def test_alibi(slopes_shape, causal, dtype):
    B, H = 2, 4
    base = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])
    slopes = base if slopes_shape == "H" else torch.stack([base, base * 0.5])
    sdpa_check(qkv(B, H, 2, 7, 10, 16), dtype, alibi_slopes=slopes, is_causal=causal, enable_gqa=True,
               return_lse=True, seed=2)


def test_alibi_with_extra_leading_dims():
    slopes = torch.rand(2, 3, 4)  # (N..., Hq) with two leading dims
    sdpa_check({"q": (2, 3, 4, 5, 8), "k": (2, 3, 4, 6, 8), "v": (2, 3, 4, 6, 8)}, torch.float32,
               alibi_slopes=slopes, seed=4)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("softcap", [0.5, 5.0, 30.0])
def test_softcap(softcap, dtype):
    # scale the inputs up so that the cap actually bites for the small caps
    sdpa_check(qkv(1, 2, 2, 6, 9, 16), dtype, softcap=softcap, scale=1.0, return_lse=True, seed=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_softcap_applies_before_alibi_and_mask(dtype):
    m = torch.randn(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    slopes = torch.tensor([0.5, 0.25])
    sdpa_check(qkv(1, 2, 2, 6, 9, 16), dtype, softcap=1.0, alibi_slopes=slopes, mask=m, is_causal=False,
               window_size=(4, 2), return_lse=True, seed=5)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", ["plain", "causal", "gqa_mask", "window_masked_rows"])
def test_return_lse(case, dtype):
    if case == "plain":
        sdpa_check(qkv(2, 2, 2, 5, 7, 16), dtype, return_lse=True)
    elif case == "causal":
        sdpa_check(qkv(1, 2, 2, 7, 5, 16), dtype, is_causal=True, return_lse=True)
    elif case == "gqa_mask":
        sdpa_check(qkv(1, 4, 2, 5, 7, 16), dtype, mask=_mask((5, 7), "bool", 1, True), return_lse=True)
    else:
        # upper-left window (0, 0) with L > S: rows i >= S see no key
        out, _ = sdpa_check(qkv(1, 2, 2, 8, 5, 16), dtype, window_size=(0, 0), return_lse=True)
        assert (out[..., 5:, :] == 0).all()


def test_return_lse_values_and_dtype_fp32_inputs():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True)
    ref = torch.logsumexp((q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8), dim=-1)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 5)
    assert max_err(lse, ref) < 1e-5
    assert max_err(out, F.scaled_dot_product_attention(q, k, v)) < 1e-5


def test_lse_carries_no_gradient_while_out_does():
    """Documented contract (README, like FlashAttention): the log-sum-exp is an auxiliary output."""
    q = torch.randn(1, 2, 4, 8, dtype=torch.float32, requires_grad=True)
    out, lse = mfa_torch.scaled_dot_product_attention(q, q, q, return_lse=True)
    assert out.requires_grad and not lse.requires_grad and lse.grad_fn is None


# ----------------------------------------------------------------------------------------------------
# empty sizes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", ["L0", "S0", "B0", "H0", "S0_causal", "L0_causal", "S0_window"])
def test_empty_sizes(case, dtype):
    B, H, L, S = 2, 2, 4, 5
    kw = {}
    if case.startswith("L0"):
        L = 0
    if case.startswith("S0"):
        S = 0
    if case == "B0":
        B = 0
    if case == "H0":
        H = 0
    if case.endswith("causal"):
        kw["is_causal"] = True
    if case.endswith("window"):
        kw["window_size"] = (1, 1)
    out, ref = sdpa_check(qkv(B, H, H, L, S, 8, 6), dtype, return_lse=True, **kw)
    assert out.shape == (B, H, L, 6)
    if case.startswith("S0"):
        assert (out == 0).all()


def test_empty_S_gradients_are_zero():
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    k = torch.randn(1, 2, 0, 8, requires_grad=True)
    v = torch.randn(1, 2, 0, 8, requires_grad=True)
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()
    out.sum().backward()
    assert q.grad is not None and (q.grad == 0).all()


# ----------------------------------------------------------------------------------------------------
# fp64 smoke (PyTorch's route or the reference): compared directly with the oracle


@pytest.mark.parametrize("case", ["plain", "causal_gqa_mask", "window_alibi_softcap"])
def test_fp64_smoke(case):
    dt = torch.float64
    if case == "plain":
        sdpa_check(qkv(2, 2, 2, 5, 7, 40, 24), dt, return_lse=True)
    elif case == "causal_gqa_mask":
        sdpa_check(qkv(1, 4, 2, 7, 5, 8), dt, mask=torch.randn(1, 1, 7, 5, dtype=dt), mask_grad=True,
                   enable_gqa=True)
        sdpa_check(qkv(1, 4, 2, 7, 5, 8), dt, is_causal=True, enable_gqa=True, return_lse=True)
    else:
        sdpa_check(qkv(1, 2, 2, 7, 9, 8), dt, window_size=(2, 1), alibi_slopes=torch.tensor([0.3, 0.1]),
                   softcap=2.0, return_lse=True)


# ----------------------------------------------------------------------------------------------------
# inputs that are views (non-contiguous, expanded, transposed)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_non_contiguous_inputs(dtype):
    g = torch.Generator().manual_seed(0)
    base_q = torch.randn(1, 7, 3, 16, generator=g).to(dtype)  # (B, L, H, E): transpose to (B, H, L, E)
    cache = torch.randn(1, 3, 20, 32, generator=g).to(dtype)  # K and V share a cache, sliced in S and E
    q = base_q.transpose(1, 2)
    k = cache[:, :, 2:11, :16]
    v = cache[:, :, 2:11, 16:]
    mask = torch.randn(1, 1, 1, 9, generator=g).to(dtype).expand(1, 3, 7, 9)
    out = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref, _ = attention_fp64(q, k, v, mask=mask)
    tq, _ = torch_attention_same_dtype(q, k, v, mask=mask)
    assert_rule("out", out, tq, ref, dtype)


# ----------------------------------------------------------------------------------------------------
# hypothesis: shape / broadcast / causal normalisation agrees with the oracle and with torch's shapes


@st.composite
def sdpa_problem(draw):
    nlead = draw(st.integers(0, 2))
    lead = tuple(draw(st.integers(1, 2)) for _ in range(nlead))
    Hk = draw(st.integers(1, 3))
    ratio = draw(st.sampled_from([1, 2, 3]))
    Hq = Hk * ratio
    L = draw(st.integers(0, 9))
    S = draw(st.integers(0, 9))
    E = draw(st.integers(1, 12))
    Ev = draw(st.integers(1, 12))
    full = lead + (Hq, L, S)
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    mshape = None
    if mask_kind:
        # random broadcastable shape: drop some leading dims, set some dims to 1
        k = draw(st.integers(2, len(full)))
        tail = full[len(full) - k:]
        mshape = tuple(1 if draw(st.booleans()) else d for d in tail)
    causal = mask_kind is None and draw(st.booleans())
    window = draw(st.one_of(st.none(), st.tuples(st.integers(-1, 4), st.integers(-1, 4))))
    seed = draw(st.integers(0, 2 ** 16))
    return lead, Hq, Hk, L, S, E, Ev, mask_kind, mshape, causal, window, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sdpa_problem())
def test_hypothesis_normalisation(problem):
    lead, Hq, Hk, L, S, E, Ev, mask_kind, mshape, causal, window, seed = problem
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(lead + (Hq, L, E), generator=g)
    k = torch.randn(lead + (Hk, S, E), generator=g)
    v = torch.randn(lead + (Hk, S, Ev), generator=g)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(mshape, generator=g) > 0.3
    elif mask_kind == "float":
        mask = torch.randn(mshape, generator=g)
    kw = dict(attn_mask=mask, is_causal=causal, enable_gqa=Hq != Hk)
    if window is not None:
        kw["window_size"] = window
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
    ref, ref_lse = attention_fp64(q, k, v, mask=mask, causal="upper_left" if causal else None, window=window)
    assert out.shape == lead + (Hq, L, Ev) and lse.shape == lead + (Hq, L)
    assert max_err(out, ref) <= 1e-5 * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    assert max_err(lse, ref_lse) <= 1e-4
    if window is None and L > 0 and S > 0:
        # without extras, mfa_torch and torch agree on shapes and values
        t = F.scaled_dot_product_attention(q, k, v, **kw)
        assert t.shape == out.shape


# ----------------------------------------------------------------------------------------------------
# dropout


def raw_attention_forward(q, k, v, *, scale, p, seed, offset, window=(-1, -1), bottom_right=False):
    """torch.ops.mfa.attention_forward called by argument name (the schema's dropout seed argument is either
    a (seed, offset) int64 tensor `dropout_seed` or two ints `seed`, `offset`); returns out and the lse of its softmax
    stats."""
    op = torch.ops.mfa.attention_forward
    names = [a.name for a in op.default._schema.arguments]
    kw = dict(q=q, k=k, v=v, mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
              max_seqlen_q=q.shape[-2], max_seqlen_k=k.shape[-2], scale=scale, window_left=window[0],
              window_right=window[1], bottom_right=bottom_right, softcap=0.0, dropout_p=p, sinks=None,
              mask_blocks=None, mask_bits=None, mask_block_size=[], block_table=None, kv_spans=None, num_splits=0)
    if "dropout_seed" in names:
        kw["dropout_seed"] = torch.tensor([seed, offset], dtype=torch.int64)
    else:
        kw["seed"], kw["offset"] = seed, offset
    out, stats = op(**{n: kw[n] for n in names})
    return out, log_sum_exp(stats).to(stats.dtype)


def test_dropout_zero_equals_no_dropout():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    a = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
    b = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("extra", [{}, {"window_size": (2, 2)}], ids=["plain", "window"])
def test_dropout_reproducible_under_manual_seed(extra):
    q = torch.randn(1, 2, 6, 8, requires_grad=True)
    k = torch.randn(1, 2, 9, 8, requires_grad=True)
    v = torch.randn(1, 2, 9, 8, requires_grad=True)
    res = []
    for s in (123, 123, 124):
        torch.manual_seed(s)
        out = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.3, **extra)
        grads = torch.autograd.grad(out.sum(), [q, k, v])
        res.append((out.detach(), grads))
    assert torch.equal(res[0][0], res[1][0])
    for a, b in zip(res[0][1], res[1][1]):
        assert torch.equal(a, b)
    assert not torch.equal(res[0][0], res[2][0]), "different seeds gave identical dropout"
    nodrop = mfa_torch.scaled_dot_product_attention(q, k, v, **extra)
    assert not torch.equal(res[0][0], nodrop), "dropout_p=0.3 had no effect"


@pytest.mark.parametrize("extra", [{}, {"is_causal": True}, {"window_size": (2, 1), "softcap": 2.0}],
                         ids=["plain", "causal", "window_softcap"])
def test_dropout_forward_backward_consistent_mask(extra):
    """Reveal the keep mask through the public API (v = identity: out = P * keep / (1 - p)), then check
    forward and backward under the same seed against the oracle with that keep mask."""
    p = 0.25
    B, H, L, S, E = 1, 2, 6, 8, 8
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, H, L, E, generator=g)
    k = torch.randn(B, H, S, E, generator=g)
    eye = torch.eye(S).expand(B, H, S, S).contiguous()
    torch.manual_seed(77)
    probe = mfa_torch.scaled_dot_product_attention(q, k, eye, dropout_p=p, **extra)
    okw = {"causal": "upper_left" if extra.get("is_causal") else None,
           "window": extra.get("window_size"), "softcap": extra.get("softcap", 0.0)}
    P, _ = attention_fp64(q, k, eye, **okw)  # no-dropout probabilities
    live = P > 0
    keep = (probe != 0) | ~live
    # the revealed mask reproduces the probe exactly (kept probabilities scaled by 1/(1-p))
    ref_probe, _ = attention_fp64(q, k, eye, dropout_keep=keep, dropout_p=p, **okw)
    assert max_err(probe, ref_probe) < 1e-5
    kept_frac = keep[live].float().mean().item()
    assert 0.4 < kept_frac < 0.95, kept_frac
    # same seed, real v: forward and all gradients match the oracle with that mask
    v = torch.randn(B, H, S, 5, generator=g)
    inputs = {"q": q.clone().requires_grad_(), "k": k.clone().requires_grad_(), "v": v.requires_grad_()}

    def ours(t):
        torch.manual_seed(77)
        return mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], dropout_p=p, **extra)

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], dropout_keep=keep, dropout_p=p, **okw)

    def torch_same(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], dropout_keep=keep, dropout_p=p, **okw)

    check_against_oracle(ours, oracle, torch_same, inputs, torch.float32)


def test_dropout_expectation_matches_no_dropout():
    """Mean over N seeds vs the no-dropout output. Each output element is sum_j P_ij keep_ij/(1-p) v_j
    with independent Bernoulli(1-p) keeps, so its variance is sigma^2 = p/(1-p) * sum_j P_ij^2 v_j^2
    (computed exactly from the oracle). The mean of N i.i.d. draws is within 6 sigma/sqrt(N) of the
    expectation except with probability ~2e-9 per element by the normal approximation (N=400 sums of
    bounded independent terms); with 2*2*6*5=120 elements a correct kernel fails < 1e-6 of the time."""
    p, N = 0.3, 400
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 6, 8, generator=g)
    k = torch.randn(2, 2, 7, 8, generator=g)
    v = torch.randn(2, 2, 7, 5, generator=g)
    P, _ = attention_fp64(q, k, torch.eye(7).expand(2, 2, 7, 7))
    ref, _ = attention_fp64(q, k, v)
    sigma = torch.sqrt(p / (1 - p) * (P.unsqueeze(-1) ** 2 * v.double().unsqueeze(-3) ** 2).sum(-2))
    acc = torch.zeros_like(ref)
    for s in range(N):
        torch.manual_seed(1000 + s)
        acc += mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=p).double()
    mean = acc / N
    z = ((mean - ref).abs() / (sigma / math.sqrt(N) + 1e-12))
    assert z.max().item() < 6.0, f"max z-score {z.max().item():.2f}"


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_reference_dropout_keep_mask_rate(p):
    """mfa_torch.reference.dropout_keep_mask: shape, dtype, determinism, keep rate 1-p (6 sigma)."""
    from mfa_torch.reference import dropout_keep_mask

    B, H, L, S = 2, 3, 40, 50
    m1 = dropout_keep_mask(17, 0, B, H, L, S, p, torch.device("cpu"))
    m2 = dropout_keep_mask(17, 0, B, H, L, S, p, torch.device("cpu"))
    m3 = dropout_keep_mask(18, 0, B, H, L, S, p, torch.device("cpu"))
    assert m1.shape == (B, H, L, S) and m1.dtype == torch.bool
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    n = m1.numel()
    rate = m1.float().mean().item()
    assert abs(rate - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n), rate


def test_dropout_raw_op_matches_oracle_with_keep_mask():
    """Raw op with explicit (seed, offset) and mfa_torch.reference.dropout_keep_mask: fwd + bwd."""
    from mfa_torch.reference import dropout_keep_mask

    p, seed, offset = 0.2, 4242, 3
    B, H, L, S, E = 1, 2, 5, 9, 8
    inputs = make_inputs({"q": (B, H, L, E), "k": (B, H, S, E), "v": (B, H, S, E)}, torch.float32, seed=3)
    keep = dropout_keep_mask(seed, offset, B, H, L, S, p, torch.device("cpu"))
    scale = 1 / math.sqrt(E)

    def ours(t):
        return raw_attention_forward(t["q"], t["k"], t["v"], scale=scale, p=p, seed=seed, offset=offset)

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], dropout_keep=keep, dropout_p=p)

    def torch_same(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], dropout_keep=keep, dropout_p=p)

    check_against_oracle(ours, oracle, torch_same, inputs, torch.float32, check_lse=True)


# ----------------------------------------------------------------------------------------------------
# backends and explain


def test_reference_backend_matches_oracle_for_all_features():
    with mfa_torch.backend("reference"):
        sdpa_check(qkv(1, 4, 2, 6, 9, 16), torch.float32, window_size=(3, 1), alibi_slopes=torch.rand(4),
                   softcap=3.0, return_lse=True, enable_gqa=True)
        sdpa_check(qkv(1, 2, 2, 6, 9, 16), torch.float16, is_causal=True, return_lse=True)
        sdpa_check(qkv(2, 2, 2, 6, 9, 16), torch.bfloat16, mask=_mask((2, 1, 6, 9), "float", 1), mask_grad=True)


@pytest.mark.parametrize("matrix_backend", ["auto"], indirect=True)
def test_explain_routes():
    q = torch.randn(1, 2, 8, 16)
    plain = mfa_torch.explain(q, q, q)
    assert isinstance(plain, str) and plain
    assert any(r in plain for r in ("torch-sdpa", "reference"))
    # what PyTorch's SDPA lacks: a mask it can take (small sizes: see tests/test_pytorch_paths.py for the rule)
    win = mfa_torch.explain(q, q, q, window_size=(2, 0))
    assert "route: sdpa-mask" in win and "window_size" in win
    al = mfa_torch.explain(q, q, q, alibi_slopes=torch.rand(2))
    assert "route: sdpa-mask" in al and "alibi" in al.lower()
    sc = mfa_torch.explain(q, q, q, softcap=5.0)  # no mask expresses a softcap
    assert "route: reference" in sc and "softcap" in sc.lower()
    with mfa_torch.backend("reference"):  # the reference route may itself call torch's SDPA
        assert any(r in mfa_torch.explain(q, q, q) for r in ("torch-sdpa", "reference"))


def test_explain_does_not_compute_or_mutate():
    q = torch.randn(1, 2, 8, 16)
    before = q.clone()
    mfa_torch.explain(q, q, q, is_causal=True, dropout_p=0.5)
    assert torch.equal(q, before)


# ----------------------------------------------------------------------------------------------------
# long enough to span several query and key blocks of a blocked implementation (online softmax across
# blocks, block skipping under windows, mask blocks read through broadcast dims, mask-gradient
# accumulation across blocks). Head dims stay tiny so the fp64 oracle is cheap.


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["window", "window_causal", "alibi_causal", "softcap", "lse_plain", "gqa_mask"])
def test_multi_block(case, dtype):
    L, S = 1100, 1300
    shapes = qkv(1, 2, 2, L, S, 4)
    if case == "window":
        sdpa_check(shapes, dtype, window_size=(300, 40), return_lse=True, seed=1)
    elif case == "window_causal":
        sdpa_check(qkv(1, 2, 1, S, L, 4), dtype, window_size=(600, -1), is_causal=True, enable_gqa=True,
                   return_lse=True, seed=2)
    elif case == "alibi_causal":
        sdpa_check(shapes, dtype, alibi_slopes=torch.tensor([0.01, 0.002]), is_causal=True, return_lse=True, seed=3)
    elif case == "softcap":
        sdpa_check(shapes, dtype, softcap=2.0, return_lse=True, seed=4)
    elif case == "lse_plain":
        sdpa_check(shapes, dtype, return_lse=True, seed=5)
    else:
        m = _mask((1, 1, L, S), "bool", seed=6, fully_masked_row=True)
        m[..., 1000, :] = False  # a fully masked row in a later query block
        m[..., :, 900:] = False  # whole later key blocks masked for every row
        sdpa_check(qkv(1, 4, 2, L, S, 4), dtype, mask=m, enable_gqa=True, return_lse=True, seed=6)


@pytest.mark.parametrize("mshape", [(1, 2, 1, 700), (600, 1), (1, 1, 600, 700)], ids=str)
def test_multi_block_float_mask_gradient(mshape):
    m = torch.randn(mshape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sdpa_check(qkv(1, 2, 2, 600, 700, 4), torch.float32, mask=m, mask_grad=True, window_size=(300, 100), seed=7)


def test_multi_block_dropout_raw_op_matches_keep_mask():
    from mfa_torch.reference import dropout_keep_mask

    p, seed, offset = 0.1, 99, 12345
    B, H, L, S, E = 1, 1, 600, 700, 4
    inputs = make_inputs({"q": (B, H, L, E), "k": (B, H, S, E), "v": (B, H, S, E)}, torch.float32, seed=3)
    keep = dropout_keep_mask(seed, offset, B, H, L, S, p, torch.device("cpu"))
    scale = 0.5

    def ours(t):
        return raw_attention_forward(t["q"], t["k"], t["v"], scale=scale, p=p, seed=seed, offset=offset,
                                     window=(100, -1))

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], window=(100, -1), dropout_keep=keep, dropout_p=p, scale=scale)

    def torch_same(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], window=(100, -1), dropout_keep=keep, dropout_p=p,
                                          scale=scale)

    check_against_oracle(ours, oracle, torch_same, inputs, torch.float32, check_lse=True)


# ----------------------------------------------------------------------------------------------------
# autograd plumbing: gradients with odd strides, partial requires_grad


@pytest.mark.parametrize("how", ["sum", "expand_batch", "strided_slice", "transposed"])
def test_backward_with_non_contiguous_grad_out(how):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 5, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 7, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 7, 6, generator=g, requires_grad=True)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64)

    def loss(out):
        if how == "sum":
            return out.sum()  # grad_out is an expanded scalar (all strides 0)
        if how == "expand_batch":
            return (out.sum(0) * w.to(out.dtype)).sum()  # grad expanded over the batch dim
        if how == "strided_slice":
            return (out[..., ::2] ** 2).sum()
        return (out.transpose(-1, -2) * w.t().to(out.dtype)).sum()

    out = mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(2, 1))
    ours = torch.autograd.grad(loss(out), [q, k, v])
    q6, k6, v6 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, _ = attention_fp64(q6, k6, v6, window=(2, 1))
    refs = torch.autograd.grad(loss(ref), [q6, k6, v6])
    for a, r in zip(ours, refs):
        assert max_err(a, r) < 1e-5


@pytest.mark.parametrize("which", ["q", "k", "v", "qv"])
def test_partial_requires_grad(which):
    g = torch.Generator().manual_seed(1)
    t = {n: torch.randn(1, 2, 5, 8, generator=g, requires_grad=n in which) for n in "qkv"}
    out = mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], alibi_slopes=torch.tensor([0.1, 0.2]))
    leaves = [t[n] for n in "qkv" if n in which]
    grads = torch.autograd.grad(out.sum(), leaves)
    t6 = {n: x.detach().double().requires_grad_(n in which) for n, x in t.items()}
    ref, _ = attention_fp64(t6["q"], t6["k"], t6["v"], alibi_slopes=torch.tensor([0.1, 0.2]))
    refs = torch.autograd.grad(ref.sum(), [t6[n] for n in "qkv" if n in which])
    for a, r in zip(grads, refs):
        assert max_err(a, r) < 1e-5


def test_no_grad_and_inference_mode():
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    with torch.no_grad():
        out = mfa_torch.scaled_dot_product_attention(q, q, q, window_size=(1, 1))
    assert out.grad_fn is None
    with torch.inference_mode():
        out = mfa_torch.scaled_dot_product_attention(q.detach(), q.detach(), q.detach(), softcap=3.0)
    ref, _ = attention_fp64(q, q, q, softcap=3.0)
    assert max_err(out, ref) < 1e-5


# ----------------------------------------------------------------------------------------------------
# dropout under the other features (GQA, fully masked rows)


def test_dropout_with_gqa_and_fully_masked_rows_no_nan():
    q = torch.randn(1, 4, 6, 8, requires_grad=True)
    k = torch.randn(1, 2, 7, 8, requires_grad=True)
    v = torch.randn(1, 2, 7, 8, requires_grad=True)
    m = torch.ones(6, 7, dtype=torch.bool)
    m[2] = False
    out = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=0.5, enable_gqa=True)
    assert not torch.isnan(out).any() and (out[:, :, 2] == 0).all()
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[:, :, 2] == 0).all()


def test_dropout_gqa_forward_backward_consistent_mask():
    """Keep mask revealed through v = identity (per query head), reused under the same seed with GQA."""
    p = 0.3
    g = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 5, 8, generator=g)
    k = torch.randn(1, 2, 6, 8, generator=g)
    eye = torch.eye(6).expand(1, 2, 6, 6).contiguous()
    torch.manual_seed(5)
    probe = mfa_torch.scaled_dot_product_attention(q, k, eye, dropout_p=p, enable_gqa=True)
    keep = probe != 0
    v = torch.randn(1, 2, 6, 3, generator=g)
    inputs = {"q": q.clone().requires_grad_(), "k": k.clone().requires_grad_(), "v": v.requires_grad_()}

    def ours(t):
        torch.manual_seed(5)
        return mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], dropout_p=p, enable_gqa=True)

    check_against_oracle(ours, lambda t: attention_fp64(t["q"], t["k"], t["v"], dropout_keep=keep, dropout_p=p),
                         lambda t: torch_attention_same_dtype(t["q"], t["k"], t["v"], dropout_keep=keep, dropout_p=p),
                         inputs, torch.float32)


def test_emulator_backend_is_either_wired_or_a_clear_error():
    """'emulator' runs the Metal kernels under the MSL emulator once that issue lands; until then it
    must raise a clear error naming the emulator (never silently take another route with wrong results)."""
    q = torch.randn(1, 2, 5, 16)
    k = torch.randn(1, 2, 7, 16)
    v = torch.randn(1, 2, 7, 16)
    try:
        with mfa_torch.backend("emulator"):
            out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    except (RuntimeError, NotImplementedError, ValueError) as e:
        assert "emulator" in str(e).lower(), str(e)
        return
    ref, _ = attention_fp64(q, k, v, causal="upper_left")
    assert max_err(out, ref) < 1e-4


# ----------------------------------------------------------------------------------------------------
# numerically hostile but valid inputs


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("extra", [{}, {"window_size": (3, 3)}, {"alibi_slopes": torch.tensor([1.0, 4.0])}],
                         ids=["plain", "window", "alibi"])
def test_large_scores_do_not_overflow(extra, dtype):
    """Scores in the hundreds/thousands: a softmax without max subtraction overflows exp() even in fp32.
    Output, lse and dv under the tolerance rule. dq and dk are ill-conditioned here (the softmax is nearly
    one-hot, so the true dq, dk are ~0 as differences of terms of size ~scale*|k|*|dO|*|v|*Ev): they must be
    finite and within EPS_REL of that natural scale, not of their own ~0 magnitude."""
    from oracle import EPS_REL

    B, H, L, S, E = 1, 2, 7, 9, 16
    g = [torch.Generator().manual_seed(i) for i in range(4)]
    q = (torch.randn(B, H, L, E, generator=g[0]) * 20).to(dtype).requires_grad_()
    k = (torch.randn(B, H, S, E, generator=g[1]) * 20).to(dtype).requires_grad_()
    v = torch.randn(B, H, S, E, generator=g[2]).to(dtype).requires_grad_()
    okw = dict(window=extra.get("window_size"), alibi_slopes=extra.get("alibi_slopes"))
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True, **extra)
    dO = torch.randn(out.shape, generator=g[3], dtype=torch.float64)
    dq, dk, dv = torch.autograd.grad(out, [q, k, v], dO.to(dtype))
    q6, k6, v6 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, ref_lse = attention_fp64(q6, k6, v6, **okw)
    rq, rk, rv = torch.autograd.grad(ref, [q6, k6, v6], dO)
    qt, kt, vt = (x.detach().clone().requires_grad_() for x in (q, k, v))
    tout, tlse = torch_attention_same_dtype(qt, kt, vt, **okw)
    (tv,) = torch.autograd.grad(tout, [vt], dO.to(dtype))
    assert_rule("out", out, tout, ref, dtype)
    assert_rule("lse", lse, tlse, ref_lse, dtype)
    assert_rule("grad v", dv, tv, rv, dtype)
    scale = 1 / math.sqrt(E)
    natural = scale * dO.abs().max().item() * v6.abs().max().item() * E
    for name, a, r, other in (("grad q", dq, rq, k6), ("grad k", dk, rk, q6)):
        assert torch.isfinite(a).all(), name
        bound = EPS_REL[dtype] * natural * other.abs().max().item()
        assert max_err(a, r) <= bound, f"{name}: err {max_err(a, r):.3e} > {bound:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_finfo_min_padding_mask_like_transformers(dtype):
    """transformers builds float masks with finfo(dtype).min, not -inf: such rows are *not* empty rows."""
    B, H, L, S = 2, 2, 5, 6
    m = torch.zeros(B, 1, L, S, dtype=dtype)
    m[1, :, :, :2] = torch.finfo(dtype).min
    m[1, :, 0, :] = torch.finfo(dtype).min  # a row of finfo.min everywhere: uniform shift, softmax unchanged
    sdpa_check(qkv(B, H, H, L, S, 8), dtype, mask=m, window_size=(-1, -1), return_lse=False, seed=3)
    sdpa_check(qkv(B, H, H, L, S, 8), dtype, mask=m, seed=4)


def test_dropout_consecutive_calls_draw_fresh_masks():
    """Training calls dropout many times after one manual_seed: each call must use a new mask."""
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    torch.manual_seed(3)
    a = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.3, window_size=(3, 3))
    b = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.3, window_size=(3, 3))
    assert not torch.equal(a, b)
    torch.manual_seed(3)
    a2 = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.3, window_size=(3, 3))
    assert torch.equal(a, a2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("route", [{}, {"window_size": (-1, -1), "softcap": 50.0}], ids=["default", "reference"])
def test_dropout_keep_rate_through_public_api(p, route):
    """Keep fraction revealed with v = identity: |rate - (1-p)| < 6 sigma of a Binomial(n, 1-p) / n, and the
    kept entries are scaled by exactly 1/(1-p)."""
    B, H, L, S, E = 1, 2, 48, 64, 8
    g = torch.Generator().manual_seed(11)
    q, k = torch.randn(B, H, L, E, generator=g), torch.randn(B, H, S, E, generator=g)
    eye = torch.eye(S).expand(B, H, S, S).contiguous()
    torch.manual_seed(2)
    probe = mfa_torch.scaled_dot_product_attention(q, k, eye, dropout_p=p, **route)
    P, _ = attention_fp64(q, k, eye, softcap=route.get("softcap", 0.0))
    keep = probe != 0
    n = keep.numel()
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n), rate
    assert max_err(probe[keep], (P / (1 - p))[keep]) < 1e-5


@pytest.mark.parametrize("extra", [{}, {"window_size": (2, 3), "alibi_slopes": torch.tensor([0.2, 0.4])}],
                         ids=["default", "reference"])
def test_bitwise_deterministic_forward_and_backward(extra):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 33, 16, generator=g, requires_grad=True) for _ in range(3))
    res = []
    for _ in range(2):
        out = mfa_torch.scaled_dot_product_attention(q, k, v, **extra)
        res.append((out.detach(),) + torch.autograd.grad(out.square().sum(), [q, k, v]))
    for a, b in zip(*res):
        assert torch.equal(a, b)
