"""The forward cases of ../shared/facts/regressions.md (rows 3, 4, 5, 6, 7, 8, 15, 16, 17) on the Metal kernels:
under the emulator here, on the GPU with `pytest -m mps`. Each row is a named test; the oracle is fp64."""
import pytest
import torch

import mfa_torch
from kernel_routes import KERNEL_ROUTES, kernel_route
from oracle import DT_IDS, DTYPES, allowed_mask, assert_rule, attention_fp64, torch_attention_same_dtype
from sdpa_check import sdpa_check

pytestmark = pytest.mark.parametrize("route", KERNEL_ROUTES)


def _check(route, shapes, dtype, **kw):
    with kernel_route(route) as device:
        return sdpa_check(shapes, dtype, grads=False, return_lse=True, device=device, **kw)


def _on(route, fn, *tensors, **kw):
    """fn on the route's device; results back on the CPU."""
    with kernel_route(route) as device:
        result = fn(*(t.to(device) for t in tensors), **kw)
    return result.cpu()


# row 3: out-of-bounds read in a split-KV decode kernel with GQA (pytorch#174861). checks="bounds" runs the same
# launches with every device buffer in an exact-size allocation under AddressSanitizer.
@pytest.mark.parametrize("checks", [None, "bounds"])
def test_row3_split_kv_decode_with_gqa_reads_in_bounds(route, checks):
    if checks and route != "emulator":
        pytest.skip("checked modes are the emulator's")
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 32, 1, 128, generator=g).bfloat16()
    k = torch.randn(1, 2, 1024, 128, generator=g).bfloat16()
    v = torch.randn(1, 2, 1024, 128, generator=g).bfloat16()
    ref, _ = attention_fp64(q, k, v)
    yard, _ = torch_attention_same_dtype(q, k, v)
    if checks:
        from mfa_torch.metal import attention as metal_attention
        out, _ = metal_attention.forward(route, q, k, v, None, None, None, None, 0, 0, 128 ** -0.5, -1, -1, False,
                                         0.0, 0.0, None, checks=checks)
    else:
        out = _on(route, mfa_torch.scaled_dot_product_attention, q, k, v, enable_gqa=True)
    assert_rule("out", out, yard, ref, torch.bfloat16)


# row 4: wrong output shape when the value head dim differs from the query head dim (pytorch#176767)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_row4_value_head_dim_differs(route, dtype):
    out, _ = _check(route, {"q": (1, 1, 16, 32), "k": (1, 1, 16, 32), "v": (1, 1, 16, 24)}, dtype)
    assert out.shape == (1, 1, 16, 24)


# row 5: causal mask applied per group of 4 query rows, leaking future tokens (pytorch#195910)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_row5_causal_does_not_leak_future_tokens(route, dtype):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 4, 64, 64, generator=g).to(dtype) for _ in range(3))
    base = _on(route, mfa_torch.scaled_dot_product_attention, q, k, v, is_causal=True)
    assert_rule("out", base, torch_attention_same_dtype(q, k, v, causal="upper_left")[0],
                attention_fp64(q, k, v, causal="upper_left")[0], dtype)
    for i in (0, 1, 2, 3, 5, 31, 62):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, i + 1:] = 37.0  # huge future keys: any leak would dominate the softmax
        v2[:, :, i + 1:] = 1000.0
        pert = _on(route, mfa_torch.scaled_dot_product_attention, q, k2, v2, is_causal=True)
        assert torch.equal(pert[:, :, : i + 1], base[:, :, : i + 1]), f"query rows <= {i} saw keys > {i}"


# row 6: NaN when a bool mask blocks a whole row (pytorch#156707)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_row6_fully_masked_row_gives_zero_not_nan(route, dtype):
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0] = False
    out, _ = _check(route, {"q": (1, 1, 2, 4), "k": (1, 1, 4, 4), "v": (1, 1, 4, 4)}, dtype, mask=mask)
    assert not torch.isnan(out).any() and (out[0, 0, 0] == 0).all()
    q, kv = torch.randn(1, 1, 2, 4).to(dtype), torch.randn(1, 1, 4, 4).to(dtype)
    with kernel_route(route) as device:
        _, lse = mfa_torch.scaled_dot_product_attention(q.to(device), kv.to(device), kv.to(device),
                                                        attn_mask=mask.to(device), return_lse=True)
    assert torch.isneginf(lse[0, 0, 0].cpu()) and torch.isfinite(lse[0, 0, 1].cpu())


# row 7: mask offset wrong for partially broadcast masks (pytorch#184180)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_row7_partially_broadcast_mask_offsets(route, kind, dtype):
    g = torch.Generator().manual_seed(7)
    if kind == "bool":
        mask = torch.rand(2, 1, 8, 8, generator=g) > 0.4
        mask[1] = ~mask[0]  # batches get very different masks: a wrong batch offset cannot hide
        mask[..., 0] = True
    else:
        mask = torch.randn(2, 1, 8, 8, generator=g) * 4
        mask[1] = -mask[0]
    _check(route, {"q": (2, 4, 8, 64), "k": (2, 4, 8, 64), "v": (2, 4, 8, 64)}, dtype, mask=mask)


# row 8: crash with GQA + float mask (pytorch#149132)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("mshape", [(3, 3), (1, 4, 3, 3), (1, 4, 1, 3)], ids=str)
def test_row8_gqa_with_float_mask(route, mshape, dtype):
    mask = torch.randn(mshape, generator=torch.Generator().manual_seed(8))
    _check(route, {"q": (1, 4, 3, 8), "k": (1, 2, 3, 8), "v": (1, 2, 3, 8)}, dtype, mask=mask, enable_gqa=True)


# row 15: causality applied twice together with an explicit mask (candle#3625)
@pytest.mark.parametrize("L", [1, 3, 4, 8, 17, 33])
def test_row15_causal_applied_once_with_explicit_mask(route, L):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(1, 2, L, 8, generator=g) for _ in range(3))
    causal = allowed_mask(L, L, causal="upper_left")
    ref, _ = attention_fp64(q, k, v, causal="upper_left")
    for out in (_on(route, mfa_torch.scaled_dot_product_attention, q, k, v, attn_mask=causal),
                _on(route, mfa_torch.scaled_dot_product_attention, q, k, v, is_causal=True)):
        assert_rule("out", out, None, ref, torch.float32)
    narrowed = _on(route, mfa_torch.scaled_dot_product_attention, q, k, v, attn_mask=causal, window_size=(2, 2))
    assert_rule("window", narrowed, None, attention_fp64(q, k, v, mask=causal, window=(2, 2))[0], torch.float32)


# row 16: non-contiguous K/V from a cache read as garbage (transformers#45974)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_row16_non_contiguous_kv_cache_views(route, dtype):
    g = torch.Generator().manual_seed(16)
    B, H, L, S, D, Smax = 2, 4, 3, 11, 16, 32
    q = torch.randn(B, H, L, D, generator=g).to(dtype)
    cache = torch.randn(2, B, Smax, H, D, generator=g).to(dtype)  # a fused (k, v) cache in (B, S, H, D) layout
    k, v = cache[0, :, 4:4 + S].transpose(1, 2), cache[1, :, 4:4 + S].transpose(1, 2)
    assert not k.is_contiguous()
    out = _on(route, mfa_torch.scaled_dot_product_attention, q, k, v)
    ref, _ = attention_fp64(q, k, v)
    assert_rule("out", out, torch_attention_same_dtype(q, k, v)[0], ref, dtype)


# row 17: head dims outside a fixed list silently take a slow path or crash (mlx#3885, mlx#3293)
@pytest.mark.parametrize("E", [192, 256, 200, 17, 320, 512])
def test_row17_any_head_dim_up_to_512_takes_the_kernels(route, E):
    q = torch.randn(1, 2, 40, E)
    assert f"route: {route}" in _explain(route, q)
    _check(route, {"q": (1, 2, 40, E), "k": (1, 2, 300, E), "v": (1, 2, 300, E)}, torch.float16, is_causal=True)


def test_row17_head_dims_past_the_kernels_take_the_reference_route_visibly(route):
    q = torch.randn(1, 2, 5, 640)
    with pytest.warns(UserWarning, match="head dims outside E 1..576, Ev 1..512"):
        text = _explain(route, q)
    assert "route: reference" in text or "route: torch-sdpa" in text
    assert "head dims outside E 1..576, Ev 1..512" in text or route == "emulator"
    ref, _ = attention_fp64(q, q, q)
    assert_rule("out", _on(route, mfa_torch.scaled_dot_product_attention, q, q, q), None, ref, torch.float32)


def _explain(route, q):
    with kernel_route(route) as device:
        on = q.to(device)
        return mfa_torch.explain(on, on, on)
