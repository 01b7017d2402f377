"""Rows of ../shared/facts/regressions.md as named tests, on the CPU route (fp64 oracle in oracle.py).

Rows 4, 5, 6, 7, 8, 14, 15, 16. (The others need sizes or a GPU outside this file's scope.)
"""
import pytest
import torch

from sdpa_check import sdpa_check
from oracle import (
    DT_IDS,
    DTYPES,
    allowed_mask,
    assert_rule,
    attention_fp64,
    max_err,
    torch_attention_same_dtype,
)

import mfa_torch  # noqa: E402


# row 4: wrong output shape when the value head dim differs from the query head dim (pytorch#176767)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_row4_value_head_dim_differs_output_shape(dtype):
    out, _ = sdpa_check({"q": (1, 1, 16, 32), "k": (1, 1, 16, 32), "v": (1, 1, 16, 24)}, dtype)
    assert out.shape == (1, 1, 16, 24)
    out, _ = sdpa_check({"q": (1, 1, 16, 32), "k": (1, 1, 16, 32), "v": (1, 1, 16, 24)}, dtype, is_causal=True)
    assert out.shape == (1, 1, 16, 24)


# row 5: causal mask applied per group of 4 query rows, leaking future tokens (pytorch#195910)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_row5_causal_does_not_leak_future_tokens(dtype):
    shapes = {"q": (1, 4, 64, 64), "k": (1, 4, 64, 64), "v": (1, 4, 64, 64)}
    sdpa_check(shapes, dtype, is_causal=True, seed=5)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 64, 64, generator=g).to(dtype) for _ in range(3))
    base = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 30, 31, 62):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, i + 1:] = 37.0  # huge future keys: any leak would dominate the softmax
        v2[:, :, i + 1:] = 1000.0
        pert = mfa_torch.scaled_dot_product_attention(q, k2, v2, is_causal=True)
        assert torch.equal(pert[:, :, : i + 1], base[:, :, : i + 1]), f"query rows <= {i} saw keys > {i}"


# row 6: NaN when a bool mask blocks a whole row (pytorch#156707)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_row6_fully_masked_bool_row_gives_zero_not_nan(dtype):
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0] = False
    out, _ = sdpa_check({"q": (1, 1, 2, 4), "k": (1, 1, 4, 4), "v": (1, 1, 4, 4)}, dtype, mask=mask, seed=6)
    assert not torch.isnan(out).any()
    assert (out[0, 0, 0] == 0).all()
    q = torch.randn(1, 1, 2, 4, dtype=dtype, requires_grad=True)
    k = torch.randn(1, 1, 4, 4, dtype=dtype, requires_grad=True)
    v = torch.randn(1, 1, 4, 4, dtype=dtype, requires_grad=True)
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
    assert torch.isneginf(lse[0, 0, 0]) and torch.isfinite(lse[0, 0, 1])
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[0, 0, 0] == 0).all()


def test_row6_fully_masked_float_row_gives_zero_not_nan():
    mask = torch.zeros(2, 4)
    mask[0] = float("-inf")
    q = torch.randn(1, 1, 2, 4, requires_grad=True)
    k = torch.randn(1, 1, 4, 4, requires_grad=True)
    v = torch.randn(1, 1, 4, 4, requires_grad=True)
    out = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (out[0, 0, 0] == 0).all() and not torch.isnan(out).any()
    out.sum().backward()
    assert (q.grad[0, 0, 0] == 0).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()


# row 7: mask offset wrong for partially broadcast masks (pytorch#184180)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_row7_partially_broadcast_mask_offsets(kind, dtype):
    g = torch.Generator().manual_seed(7)
    if kind == "bool":
        mask = torch.rand(2, 1, 8, 8, generator=g) > 0.4
        mask[1] = ~mask[0]  # batches get very different masks: a wrong batch offset cannot hide
        mask[..., 0] = True
    else:
        mask = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) * 4
        mask[1] = -mask[0]
    sdpa_check({"q": (2, 4, 8, 64), "k": (2, 4, 8, 64), "v": (2, 4, 8, 64)}, dtype, mask=mask, seed=7)


def test_row7_mask_gradient_for_partially_broadcast_float_mask():
    mask = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    sdpa_check({"q": (2, 4, 8, 64), "k": (2, 4, 8, 64), "v": (2, 4, 8, 64)}, torch.float32, mask=mask, mask_grad=True)


# row 8: crash with GQA + float mask (pytorch#149132)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("mshape", [(3, 3), (1, 4, 3, 3), (1, 1, 3, 3), (1, 4, 1, 3)], ids=str)
def test_row8_gqa_with_float_mask(mshape, dtype):
    mask = torch.randn(mshape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sdpa_check({"q": (1, 4, 3, 8), "k": (1, 2, 3, 8), "v": (1, 2, 3, 8)}, dtype, mask=mask, enable_gqa=True,
           mask_grad=True)


# row 14: NaN embeddings with left padding (sentence-transformers#3498)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_row14_left_padding_gives_no_nan(dtype):
    B, H, S, D = 3, 2, 9, 16
    pads = [0, 3, 8]  # left padding per batch element; the last has one real token
    key_ok = torch.ones(B, S, dtype=torch.bool)
    for b, p in enumerate(pads):
        key_ok[b, :p] = False
    causal = allowed_mask(S, S, causal="upper_left")
    mask = causal[None, None] & key_ok[:, None, None, :]  # (B, 1, S, S): padded query rows see nothing
    out, _ = sdpa_check({"q": (B, H, S, D), "k": (B, H, S, D), "v": (B, H, S, D)}, dtype, mask=mask, seed=14)
    assert not torch.isnan(out).any()
    for b, p in enumerate(pads):
        assert (out[b, :, :p] == 0).all()
    # the real tokens get exactly what the unpadded sequence gets (within the rule)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, S, D, generator=g).to(dtype) for _ in range(3))
    full = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for b, p in enumerate(pads):
        alone = mfa_torch.scaled_dot_product_attention(q[b:b + 1, :, p:], k[b:b + 1, :, p:], v[b:b + 1, :, p:],
                                                       is_causal=True)
        ref, _ = attention_fp64(q[b:b + 1, :, p:], k[b:b + 1, :, p:], v[b:b + 1, :, p:], causal="upper_left")
        tq, _ = torch_attention_same_dtype(q[b:b + 1, :, p:], k[b:b + 1, :, p:], v[b:b + 1, :, p:], causal="upper_left")
        assert_rule("padded", full[b:b + 1, :, p:], tq, ref, dtype)
        assert_rule("alone", alone, tq, ref, dtype)


def test_row14_left_padding_gradients_finite():
    B, H, S, D = 2, 2, 6, 8
    key_ok = torch.ones(B, S, dtype=torch.bool)
    key_ok[1, :4] = False
    mask = allowed_mask(S, S, causal="upper_left")[None, None] & key_ok[:, None, None, :]
    q, k, v = (torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    out = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[1, :, :4] == 0).all() and (k.grad[1, :, :4] == 0).all() and (v.grad[1, :, :4] == 0).all()


# row 15: causality applied twice together with an explicit mask (candle#3625)
@pytest.mark.parametrize("L", [1, 2, 3, 4, 7, 8, 16, 17, 32, 33])
def test_row15_causal_applied_once_with_explicit_mask(L):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(1, 2, L, 8, generator=g) for _ in range(3))
    causal = allowed_mask(L, L, causal="upper_left")
    a = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    b = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref, _ = attention_fp64(q, k, v, causal="upper_left")
    assert max_err(a, ref) < 1e-5 and max_err(b, ref) < 1e-5
    # an explicit causal mask together with a window: the window narrows, causality is not re-applied/shifted
    c = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=causal, window_size=(2, 2))
    ref_c, _ = attention_fp64(q, k, v, mask=causal, window=(2, 2))
    assert max_err(c, ref_c) < 1e-5
    # an explicit padding-style mask with a periodic pattern plus a window: applied exactly once
    pm = (torch.arange(L)[None, :] % 3 != 2) | (torch.arange(L)[None, :] == 0)
    d = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=pm.expand(L, L), window_size=(-1, 0))
    ref_d, _ = attention_fp64(q, k, v, mask=pm.expand(L, L), causal="upper_left")
    assert max_err(d, ref_d) < 1e-5


def test_row15_is_causal_with_mask_is_rejected():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises((ValueError, TypeError), match="is_causal"):
        mfa_torch.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True)


@pytest.mark.parametrize("SqSk", [(3, 8), (8, 3), (5, 5)], ids=str)
def test_row15_flash_causal_once_bottom_right(SqSk):
    Sq, Sk = SqSk
    g = torch.Generator().manual_seed(15)
    q = torch.randn(1, Sq, 2, 8, generator=g)
    k = torch.randn(1, Sk, 2, 8, generator=g)
    v = torch.randn(1, Sk, 2, 8, generator=g)
    out = mfa_torch.flash_attn_func(q, k, v, causal=True, window_size=(-1, 0))
    ref, _ = attention_fp64(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal="bottom_right")
    assert max_err(out, ref.transpose(1, 2)) < 1e-5


# row 16: non-contiguous K/V from a cache read as garbage (transformers#45974)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("layout", ["slice_S", "bshd_transposed", "fused_kv", "strided_heads"])
def test_row16_non_contiguous_kv_cache_views(layout, dtype):
    g = torch.Generator().manual_seed(16)
    B, H, L, S, D, Smax = 2, 4, 3, 11, 16, 32
    q = torch.randn(B, H, L, D, generator=g).to(dtype)
    if layout == "slice_S":
        kc = torch.randn(B, H, Smax, D, generator=g).to(dtype)
        vc = torch.randn(B, H, Smax, D, generator=g).to(dtype)
        k, v = kc[:, :, :S], vc[:, :, :S]
    elif layout == "bshd_transposed":
        kc = torch.randn(B, Smax, H, D, generator=g).to(dtype)
        vc = torch.randn(B, Smax, H, D, generator=g).to(dtype)
        k, v = kc[:, 4:4 + S].transpose(1, 2), vc[:, 4:4 + S].transpose(1, 2)
    elif layout == "fused_kv":
        kv = torch.randn(B, H, Smax, 2, D, generator=g).to(dtype)
        k, v = kv[:, :, 1:1 + S, 0], kv[:, :, 1:1 + S, 1]
    else:
        kc = torch.randn(B, 2 * H, Smax, D, generator=g).to(dtype)
        k, v = kc[:, ::2, :S], kc[:, 1::2, 5:5 + S]
    assert not k.is_contiguous() and not v.is_contiguous()
    out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=False)
    ref, _ = attention_fp64(q, k, v)
    tq, _ = torch_attention_same_dtype(q, k, v)
    assert_rule("out", out, tq, ref, dtype)
    # decode-style: one query against the cache slice, with the flash API too
    out2 = mfa_torch.flash_attn_func(q[:, :, -1:].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    ref2, _ = attention_fp64(q[:, :, -1:], k, v, causal="bottom_right")
    tq2, _ = torch_attention_same_dtype(q[:, :, -1:], k, v, causal="bottom_right")
    assert_rule("flash out", out2.transpose(1, 2), tq2, ref2, dtype)


def test_row16_gradients_flow_into_the_cache():
    g = torch.Generator().manual_seed(160)
    cache = torch.randn(1, 2, 20, 8, generator=g, dtype=torch.float64).requires_grad_()
    q = torch.randn(1, 2, 4, 8, generator=g, dtype=torch.float64)
    k, v = cache[:, :, 3:10], cache[:, :, 10:17]
    out = mfa_torch.scaled_dot_product_attention(q, k, v)
    (gc,) = torch.autograd.grad(out.sum(), [cache])
    cache2 = cache.detach().requires_grad_()
    ref, _ = attention_fp64(q, cache2[:, :, 3:10], cache2[:, :, 10:17])
    (rc,) = torch.autograd.grad(ref.sum(), [cache2])
    assert max_err(gc, rc) < 1e-10
