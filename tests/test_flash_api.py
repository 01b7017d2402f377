"""mfa_torch.flash_attn_func / flash_attn_varlen_func against the fp64 oracle (tests/oracle.py).

FlashAttention conventions: (B, S, H, D) layout, causal / window / ALiBi aligned to the bottom right
(query i is aligned with key i + Sk - Sq), lse (B, H, Sq) fp32; varlen: packed (total, H, D) with int32
cu_seqlens, every sequence on its own with bottom-right alignment, lse (H, total_q).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import (
    DT_IDS,
    DTYPES,
    attention_fp64,
    check_against_oracle,
    flash_to_sdpa,
    make_inputs,
    max_err,
    sdpa_to_flash,
    torch_attention_same_dtype,
    varlen_attention_fp64,
)
from kernel_routes import matrix_backend  # noqa: F401  (an autouse fixture)

import mfa_torch  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# the oracle's masks agree with the FlashAttention definitions written out element by element


@pytest.mark.parametrize("Sq,Sk", [(3, 7), (7, 3), (5, 5), (1, 4), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (1, 0), (0, 2), (2, -1), (-1, 1)])
def test_oracle_alignment_matches_definition(Sq, Sk, causal, window):
    from oracle import allowed_mask

    left, right = window
    got = allowed_mask(Sq, Sk, causal="bottom_right" if causal else None, window=window, align="bottom_right")
    for i in range(Sq):
        for j in range(Sk):
            d = i + Sk - Sq
            ok = True
            if causal:
                ok &= j <= d
            if left >= 0:
                ok &= j >= d - left
            if right >= 0:
                ok &= j <= d + right
            assert bool(got[i, j]) == ok, (i, j)
    got_ul = allowed_mask(Sq, Sk, causal="upper_left" if causal else None, window=window)
    for i in range(Sq):
        for j in range(Sk):
            ok = (not causal or j <= i) and (left < 0 or j >= i - left) and (right < 0 or j <= i + right)
            assert bool(got_ul[i, j]) == ok, (i, j)


def test_oracle_alibi_bias_matches_definition():
    from oracle import bias_fp64

    Sq, Sk, H = 3, 6, 2
    slopes = torch.tensor([0.5, 0.25])
    b = bias_fp64(H, Sq, Sk, alibi_slopes=slopes, align="bottom_right")
    for h in range(H):
        for i in range(Sq):
            for j in range(Sk):
                assert b[h, i, j].item() == -slopes[h].item() * abs(i + Sk - Sq - j)


# ----------------------------------------------------------------------------------------------------
# dense flash_attn_func


def _okw(causal, window, alibi, softcap, scale):
    w = None if tuple(window) == (-1, -1) else tuple(window)
    return dict(causal="bottom_right" if causal else None, window=w, alibi_slopes=alibi, softcap=softcap,
                scale=scale, align="bottom_right")


def flash_check(B, Sq, Sk, H, Hk, D, Dv, dtype, *, causal=False, window=(-1, -1), alibi=None, softcap=0.0,
                scale=None, lse=True, seed=0, deterministic=False):
    inputs = make_inputs({"q": (B, Sq, H, D), "k": (B, Sk, Hk, D), "v": (B, Sk, Hk, Dv)}, dtype, seed=seed)
    okw = _okw(causal, window, alibi, softcap, scale)

    def ours(t):
        r = mfa_torch.flash_attn_func(t["q"], t["k"], t["v"], softmax_scale=scale, causal=causal,
                                      window_size=window, softcap=softcap, alibi_slopes=alibi,
                                      deterministic=deterministic, return_attn_probs=lse)
        if lse:
            assert isinstance(r, tuple) and len(r) == 3, "return_attn_probs=True must return (out, lse, None)"
            assert r[2] is None
            return r[0], r[1]
        assert isinstance(r, torch.Tensor)
        return r

    def oracle(t):
        o, l = attention_fp64(flash_to_sdpa(t["q"]), flash_to_sdpa(t["k"]), flash_to_sdpa(t["v"]), **okw)
        return sdpa_to_flash(o), l

    def torch_same(t):
        o, l = torch_attention_same_dtype(flash_to_sdpa(t["q"]), flash_to_sdpa(t["k"]), flash_to_sdpa(t["v"]), **okw)
        return sdpa_to_flash(o), l

    return check_against_oracle(ours, oracle, torch_same, inputs, dtype, check_lse=lse)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("SqSk", [(8, 8), (5, 12), (12, 5), (1, 9), (9, 1)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_causal_bottom_right(SqSk, causal, dtype):
    Sq, Sk = SqSk
    out, _ = flash_check(2, Sq, Sk, 2, 2, 16, 16, dtype, causal=causal, seed=Sq * 31 + Sk)
    if causal and Sq > Sk:
        # rows i < Sq - Sk see no key under bottom-right alignment: exactly zero
        assert (out[:, : Sq - Sk] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("window", [(2, 0), (0, 2), (3, 1), (-1, 2), (2, -1), (0, 0)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_window(window, causal, dtype):
    flash_check(1, 7, 11, 2, 1, 16, 16, dtype, causal=causal, window=window, seed=3)
    flash_check(1, 11, 7, 2, 2, 16, 16, dtype, causal=causal, window=window, seed=4)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", ["H", "BH"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_alibi(shape, causal, dtype):
    H = 4
    base = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)], dtype=torch.float32)
    slopes = base if shape == "H" else torch.stack([base, base.flip(0)])
    flash_check(2, 6, 10, H, 2, 16, 16, dtype, causal=causal, alibi=slopes, seed=5)
    flash_check(2, 10, 6, H, 2, 16, 16, dtype, causal=causal, alibi=slopes, seed=6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("softcap", [1.0, 30.0])
def test_flash_softcap(softcap, dtype):
    flash_check(1, 6, 9, 2, 2, 16, 16, dtype, softcap=softcap, scale=1.0, seed=7)
    flash_check(1, 9, 6, 2, 2, 16, 16, dtype, softcap=softcap, causal=True, window=(3, 0), seed=8)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("HHk", [(4, 4), (4, 2), (8, 2), (4, 1)], ids=str)
def test_flash_gqa_mqa(HHk, dtype):
    H, Hk = HHk
    flash_check(2, 5, 7, H, Hk, 16, 16, dtype, causal=True, seed=9)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("DDv", [(1, 1), (40, 40), (72, 24), (80, 80), (96, 96), (160, 64), (192, 192), (256, 256)],
                         ids=str)
def test_flash_head_dims(DDv, dtype):
    D, Dv = DDv
    flash_check(1, 5, 7, 2, 2, D, Dv, dtype, causal=True, seed=D)


def test_flash_softmax_scale_and_no_probs():
    flash_check(1, 5, 7, 2, 2, 16, 16, torch.float32, scale=0.21, lse=False)


def test_flash_deterministic_flag_same_result():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 16, generator=g) for _ in range(3))
    a = mfa_torch.flash_attn_func(q, k, v, causal=True)
    b = mfa_torch.flash_attn_func(q, k, v, causal=True, deterministic=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["Sq0", "Sk0", "B0"])
def test_flash_empty(case):
    B, Sq, Sk = 2, 4, 5
    if case == "Sq0":
        Sq = 0
    if case == "Sk0":
        Sk = 0
    if case == "B0":
        B = 0
    out, _ = flash_check(B, Sq, Sk, 2, 2, 8, 8, torch.float32)
    assert out.shape == (B, Sq, 2, 8)
    if case == "Sk0":
        assert (out == 0).all()


def test_flash_fp64_smoke():
    flash_check(1, 5, 7, 4, 2, 8, 8, torch.float64, causal=True, window=(2, 1),
                alibi=torch.tensor([0.1, 0.2, 0.3, 0.4]), softcap=5.0)


def test_flash_matches_sdpa_when_square():
    """Square problems: bottom-right == upper-left, so flash_attn_func(causal) == sdpa(is_causal)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 7, 4, 16, generator=g) for _ in range(3))
    a = mfa_torch.flash_attn_func(q, k, v, causal=True)
    b = mfa_torch.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True).transpose(1, 2)
    assert max_err(a, b) < 1e-5


def test_flash_non_contiguous_kv_cache_views():
    g = torch.Generator().manual_seed(3)
    cache_k = torch.randn(2, 32, 4, 16, generator=g)
    cache_v = torch.randn(2, 32, 4, 16, generator=g)
    q = torch.randn(2, 3, 4, 16, generator=g)
    k, v = cache_k[:, 5:17], cache_v[:, 5:17]
    out = mfa_torch.flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_fp64(flash_to_sdpa(q), flash_to_sdpa(k), flash_to_sdpa(v), causal="bottom_right")
    assert max_err(out, sdpa_to_flash(ref)) < 1e-5


def test_flash_dropout_reproducible():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 6, 2, 8, generator=g) for _ in range(3))
    torch.manual_seed(9)
    a = mfa_torch.flash_attn_func(q, k, v, dropout_p=0.4)
    torch.manual_seed(9)
    b = mfa_torch.flash_attn_func(q, k, v, dropout_p=0.4)
    assert torch.equal(a, b)
    assert not torch.equal(a, mfa_torch.flash_attn_func(q, k, v))


@st.composite
def flash_problem(draw):
    B = draw(st.integers(1, 2))
    Hk = draw(st.integers(1, 2))
    H = Hk * draw(st.sampled_from([1, 2, 4]))
    Sq = draw(st.integers(0, 10))
    Sk = draw(st.integers(0, 10))
    D = draw(st.integers(1, 10))
    causal = draw(st.booleans())
    window = draw(st.tuples(st.integers(-1, 4), st.integers(-1, 4)))
    alibi = draw(st.sampled_from([None, "H", "BH"]))
    seed = draw(st.integers(0, 2 ** 16))
    return B, H, Hk, Sq, Sk, D, causal, window, alibi, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flash_problem())
def test_hypothesis_flash_alignment(problem):
    B, H, Hk, Sq, Sk, D, causal, window, alibi, seed = problem
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Sq, H, D, generator=g)
    k = torch.randn(B, Sk, Hk, D, generator=g)
    v = torch.randn(B, Sk, Hk, D, generator=g)
    slopes = None if alibi is None else torch.rand((H,) if alibi == "H" else (B, H), generator=g)
    out, lse, none = mfa_torch.flash_attn_func(q, k, v, causal=causal, window_size=window, alibi_slopes=slopes,
                                               return_attn_probs=True)
    assert none is None
    ref, ref_lse = attention_fp64(flash_to_sdpa(q), flash_to_sdpa(k), flash_to_sdpa(v),
                                  **_okw(causal, window, slopes, 0.0, None))
    assert out.shape == (B, Sq, H, D) and lse.shape == (B, H, Sq)
    assert max_err(out, sdpa_to_flash(ref)) <= 1e-5 * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    assert max_err(lse, ref_lse) <= 1e-4


# ----------------------------------------------------------------------------------------------------
# varlen


def _torch_varlen_same_dtype(q, k, v, cq, ck, **okw):
    outs, lses = [], []
    cq, ck = [int(x) for x in cq], [int(x) for x in ck]
    for b in range(len(cq) - 1):
        kw = dict(okw)
        if kw.get("alibi_slopes") is not None and kw["alibi_slopes"].dim() == 2:
            kw["alibi_slopes"] = kw["alibi_slopes"][b]
        o, l = torch_attention_same_dtype(q[cq[b]:cq[b + 1]].transpose(0, 1), k[ck[b]:ck[b + 1]].transpose(0, 1),
                                          v[ck[b]:ck[b + 1]].transpose(0, 1), **kw)
        outs.append(o.transpose(0, 1))
        lses.append(l)
    return torch.cat(outs, 0), torch.cat(lses, 1)


def varlen_check(lens_q, lens_k, H, Hk, D, Dv, dtype, *, causal=False, window=(-1, -1), alibi=None, softcap=0.0,
                 scale=None, seed=0):
    cq = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    ck = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    tq, tk = int(cq[-1]), int(ck[-1])
    inputs = make_inputs({"q": (tq, H, D), "k": (tk, Hk, D), "v": (tk, Hk, Dv)}, dtype, seed=seed)
    okw = _okw(causal, window, None, softcap, scale)

    def ours(t):
        out, lse, none = mfa_torch.flash_attn_varlen_func(
            t["q"], t["k"], t["v"], cq, ck, max(lens_q), max(lens_k), softmax_scale=scale, causal=causal,
            window_size=window, softcap=softcap, alibi_slopes=alibi, return_attn_probs=True)
        assert none is None
        return out, lse

    def oracle(t):
        return varlen_attention_fp64(t["q"], t["k"], t["v"], cq, ck, causal=causal, window=window,
                                     alibi_slopes=alibi, softcap=softcap, scale=scale)

    def torch_same(t):
        kw = dict(okw)
        kw["alibi_slopes"] = alibi
        return _torch_varlen_same_dtype(t["q"], t["k"], t["v"], cq, ck, **kw)

    return check_against_oracle(ours, oracle, torch_same, inputs, dtype, check_lse=True)


LENS = [
    ([3, 5, 1], [3, 5, 1]),
    ([4, 0, 7], [6, 2, 3]),  # an empty query sequence; Sq > Sk in the last one
    ([1, 1, 1, 1], [5, 9, 1, 2]),  # decode-like
    ([6, 2], [0, 4]),  # an empty key sequence: its queries give 0 / -inf
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("lens", LENS, ids=lambda l: f"q{l[0]}k{l[1]}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen(lens, causal, dtype):
    out, _ = varlen_check(lens[0], lens[1], 2, 2, 16, 16, dtype, causal=causal, seed=len(lens[0]))
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("feature", ["window", "alibi_H", "alibi_BH", "softcap", "gqa", "mqa_Dv", "scale"])
def test_varlen_features(feature, dtype):
    lens_q, lens_k = [4, 7, 2], [6, 5, 2]
    H, Hk, D, Dv = 4, 4, 16, 16
    kw = {}
    if feature == "window":
        kw = dict(window=(2, 1), causal=True)
    elif feature == "alibi_H":
        kw = dict(alibi=torch.tensor([0.5, 0.25, 0.125, 0.0625]), causal=True)
    elif feature == "alibi_BH":
        kw = dict(alibi=torch.rand(3, 4))
    elif feature == "softcap":
        kw = dict(softcap=2.0, scale=1.0)
    elif feature == "gqa":
        Hk = 2
        kw = dict(causal=True)
    elif feature == "mqa_Dv":
        Hk, Dv = 1, 24
    else:
        kw = dict(scale=0.3)
    varlen_check(lens_q, lens_k, H, Hk, D, Dv, dtype, seed=2, **kw)


def test_varlen_sequences_are_isolated():
    g = torch.Generator().manual_seed(0)
    cq = torch.tensor([0, 3, 7], dtype=torch.int32)
    ck = torch.tensor([0, 4, 9], dtype=torch.int32)
    q, k, v = torch.randn(7, 2, 8, generator=g), torch.randn(9, 2, 8, generator=g), torch.randn(9, 2, 8, generator=g)
    a = mfa_torch.flash_attn_varlen_func(q, k, v, cq, ck, 4, 5)
    k2, v2 = k.clone(), v.clone()
    k2[4:] += 10.0
    v2[4:] -= 3.0
    b = mfa_torch.flash_attn_varlen_func(q, k2, v2, cq, ck, 4, 5)
    assert torch.equal(a[:3], b[:3]), "sequence 0 read keys of sequence 1"
    assert not torch.equal(a[3:], b[3:])


def test_varlen_matches_dense_flash_for_equal_lengths():
    g = torch.Generator().manual_seed(1)
    B, S, H, D = 3, 6, 2, 8
    q, k, v = (torch.randn(B, S, H, D, generator=g) for _ in range(3))
    cu = torch.arange(0, (B + 1) * S, S, dtype=torch.int32)
    a = mfa_torch.flash_attn_varlen_func(q.reshape(B * S, H, D), k.reshape(B * S, H, D), v.reshape(B * S, H, D),
                                         cu, cu, S, S, causal=True)
    b = mfa_torch.flash_attn_func(q, k, v, causal=True)
    assert max_err(a, b.reshape(B * S, H, D)) < 1e-5


def test_varlen_fp64_smoke():
    varlen_check([3, 5], [4, 2], 2, 1, 8, 8, torch.float64, causal=True, window=(1, 0))


# ----------------------------------------------------------------------------------------------------
# dropout consistency (keep mask revealed through v = identity, then reused under the same seed)


def test_flash_dropout_forward_backward_consistent_mask():
    p, B, Sq, Sk, H, Hk, D = 0.3, 2, 5, 8, 4, 2, 8
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, Sq, H, D, generator=g)
    k = torch.randn(B, Sk, Hk, D, generator=g)
    eye = torch.eye(Sk).view(1, Sk, 1, Sk).expand(B, Sk, Hk, Sk).contiguous()
    torch.manual_seed(21)
    probe = mfa_torch.flash_attn_func(q, k, eye, dropout_p=p, causal=True)
    keep = flash_to_sdpa(probe) != 0  # (B, H, Sq, Sk)
    v = torch.randn(B, Sk, Hk, 6, generator=g)
    inputs = {"q": q.clone().requires_grad_(), "k": k.clone().requires_grad_(), "v": v.requires_grad_()}
    okw = dict(causal="bottom_right", dropout_keep=keep, dropout_p=p)

    def ours(t):
        torch.manual_seed(21)
        return mfa_torch.flash_attn_func(t["q"], t["k"], t["v"], dropout_p=p, causal=True)

    def oracle(t):
        o, _ = attention_fp64(flash_to_sdpa(t["q"]), flash_to_sdpa(t["k"]), flash_to_sdpa(t["v"]), **okw)
        return sdpa_to_flash(o)

    def torch_same(t):
        o, _ = torch_attention_same_dtype(flash_to_sdpa(t["q"]), flash_to_sdpa(t["k"]), flash_to_sdpa(t["v"]), **okw)
        return sdpa_to_flash(o)

    check_against_oracle(ours, oracle, torch_same, inputs, torch.float32)


def test_varlen_dropout_forward_backward_consistent_mask():
    p, H, D = 0.25, 2, 8
    cq = torch.tensor([0, 3, 8, 8, 10], dtype=torch.int32)
    ck = torch.tensor([0, 4, 7, 9, 14], dtype=torch.int32)
    tq, tk = 10, 14
    g = torch.Generator().manual_seed(4)
    q = torch.randn(tq, H, D, generator=g)
    k = torch.randn(tk, H, D, generator=g)
    eye = torch.eye(tk).view(tk, 1, tk).expand(tk, H, tk).contiguous()
    torch.manual_seed(8)
    probe = mfa_torch.flash_attn_varlen_func(q, k, eye, cq, ck, 5, 5, dropout_p=p, causal=True)
    keep = probe != 0  # (tq, H, tk), packed: entries outside a sequence are 0 anyway
    v = torch.randn(tk, H, 5, generator=g)
    inputs = {"q": q.clone().requires_grad_(), "k": k.clone().requires_grad_(), "v": v.requires_grad_()}

    def per_seq(t, fn):
        outs = []
        for b in range(len(cq) - 1):
            rq, rk = slice(int(cq[b]), int(cq[b + 1])), slice(int(ck[b]), int(ck[b + 1]))
            kb = keep[rq, :, rk].permute(1, 0, 2)
            o, _ = fn(t["q"][rq].transpose(0, 1), t["k"][rk].transpose(0, 1), t["v"][rk].transpose(0, 1),
                      causal="bottom_right", dropout_keep=kb, dropout_p=p)
            outs.append(o.transpose(0, 1))
        return torch.cat(outs, 0)

    def ours(t):
        torch.manual_seed(8)
        return mfa_torch.flash_attn_varlen_func(t["q"], t["k"], t["v"], cq, ck, 5, 5, dropout_p=p, causal=True)

    check_against_oracle(ours, lambda t: per_seq(t, attention_fp64), lambda t: per_seq(t, torch_attention_same_dtype),
                         inputs, torch.float32)


# ----------------------------------------------------------------------------------------------------
# long sequences: several blocks of a blocked implementation, bottom-right alignment across blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("SqSk", [(700, 1300), (1300, 700)], ids=str)
def test_flash_multi_block_causal_window(SqSk, dtype):
    Sq, Sk = SqSk
    flash_check(1, Sq, Sk, 2, 1, 4, 4, dtype, causal=True, window=(520, 0), alibi=torch.tensor([0.01, 0.003]),
                seed=Sq)


def test_varlen_multi_block():
    varlen_check([700, 30, 600], [650, 800, 20], 2, 1, 4, 4, torch.float32, causal=True, window=(300, 10), seed=1)
