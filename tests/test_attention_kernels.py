"""The Metal attention forward (shaders/attention_forward.metal, attention_combine.metal) end to end through the
public API, against the fp64 oracle with the 2x-PyTorch-error rule: under the emulator here, on the GPU with
`pytest -m mps`. Forward only: gradients are the backward kernels' tests."""
import pytest
import torch

import mfa_torch
from mfa_torch import _C
from mfa_torch.metal import attention as metal_attention
from kernel_routes import KERNEL_ROUTES, kernel_route, log_sum_exp, varlen_case, with_dtypes
from mfa_torch.reference import dropout_keep_mask
from oracle import (DT_IDS, DTYPES, allowed_mask, assert_rule, attention_fp64, make_inputs,
                    torch_attention_same_dtype, varlen_attention_fp64)
from sdpa_check import sdpa_check

pytestmark = pytest.mark.parametrize("route", KERNEL_ROUTES)

HEAD_DIMS = [1, 8, 40, 64, 72, 80, 96, 128, 160, 192, 256]


def _sdpa(route, shapes, dtype, **kw):
    with kernel_route(route) as device:
        return sdpa_check(shapes, dtype, grads=False, return_lse=True, device=device, **kw)


@pytest.mark.parametrize("E, dtype", with_dtypes(HEAD_DIMS, DTYPES))
def test_every_head_dim(route, E, dtype):
    _sdpa(route, {"q": (1, 2, 19, E), "k": (1, 2, 37, E), "v": (1, 2, 37, E)}, dtype)


@pytest.mark.parametrize("dims, dtype", with_dtypes([(32, 24), (40, 128), (256, 8), (1, 72), (160, 200), (24, 32)],
                                                    DTYPES))
def test_value_head_dim_differs(route, dims, dtype):
    E, Ev = dims
    _sdpa(route, {"q": (1, 2, 11, E), "k": (1, 2, 21, E), "v": (1, 2, 21, Ev)}, dtype, is_causal=True)


@pytest.mark.parametrize("lengths, dtype", with_dtypes([(1, 1), (1, 77), (77, 1), (33, 130), (130, 33), (64, 64)],
                                                       DTYPES))
def test_sequence_lengths_not_multiples_of_any_block(route, lengths, dtype):
    L, S = lengths
    _sdpa(route, {"q": (2, 3, L, 32), "k": (2, 3, S, 32), "v": (2, 3, S, 32)}, dtype)


@pytest.mark.parametrize("lengths, dtype", with_dtypes([(20, 45), (45, 20), (31, 31)], DTYPES))
def test_causal_upper_left(route, lengths, dtype):
    L, S = lengths
    _sdpa(route, {"q": (1, 2, L, 32), "k": (1, 2, S, 32), "v": (1, 2, S, 32)}, dtype, is_causal=True)


@pytest.mark.parametrize("window, dtype", with_dtypes([(0, 0), (5, 3), (16, 0), (-1, 4), (7, -1), (200, 200)], DTYPES))
def test_sliding_window(route, window, dtype):
    _sdpa(route, {"q": (1, 2, 41, 32), "k": (1, 2, 70, 32), "v": (1, 2, 70, 32)}, dtype, window_size=window)


@pytest.mark.parametrize("heads, dtype", with_dtypes([(4, 2), (8, 1), (6, 3), (16, 2)], DTYPES))
def test_gqa_and_mqa(route, heads, dtype):
    Hq, Hk = heads
    _sdpa(route, {"q": (2, Hq, 13, 32), "k": (2, Hk, 29, 32), "v": (2, Hk, 29, 32)}, dtype, is_causal=True)


MASK_SHAPES = [(1, 1, 17, 23), (2, 1, 17, 23), (1, 3, 17, 23), (2, 3, 17, 23), (1, 1, 1, 23), (2, 3, 17, 1)]


@pytest.mark.parametrize("mask_shape, dtype", with_dtypes(MASK_SHAPES, DTYPES))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_through_broadcast_strides(route, mask_shape, dtype, kind):
    g = torch.Generator().manual_seed(3)
    if kind == "bool":
        mask = torch.rand(mask_shape, generator=g) > 0.3
    else:
        mask = torch.randn(mask_shape, generator=g) * 2
    _sdpa(route, {"q": (2, 3, 17, 32), "k": (2, 3, 23, 32), "v": (2, 3, 23, 32)}, dtype, mask=mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_float32_mask_with_16_bit_inputs_and_expanded_mask_views(route, dtype):
    shapes = {"q": (2, 2, 9, 32), "k": (2, 2, 12, 32), "v": (2, 2, 12, 32)}
    inputs = make_inputs(shapes, dtype, seed=4)
    base = torch.randn(1, 1, 9, 12)
    mask = base.expand(2, 2, 9, 12)  # stride-0 view: read through its strides, never copied
    ref, ref_lse = attention_fp64(inputs["q"], inputs["k"], inputs["v"], mask=mask)
    yardstick, _ = torch_attention_same_dtype(inputs["q"], inputs["k"], inputs["v"], mask=mask.to(dtype))
    with kernel_route(route) as device:
        out = mfa_torch.scaled_dot_product_attention(*(inputs[n].detach().to(device) for n in "qkv"),
                                                     attn_mask=mask.to(device)).cpu()
    assert_rule("out", out, yardstick, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_rows_that_attend_nothing_give_zero_and_minus_inf(route, dtype):
    mask = torch.ones(1, 1, 6, 10, dtype=torch.bool)
    mask[..., 0, :] = False
    mask[..., 4, :] = False
    out, _ = _sdpa(route, {"q": (1, 2, 6, 32), "k": (1, 2, 10, 32), "v": (1, 2, 10, 32)}, dtype, mask=mask)
    assert torch.all(out[..., 0, :] == 0) and torch.all(out[..., 4, :] == 0)
    float_mask = torch.zeros(1, 1, 6, 10)
    float_mask[..., 2, :] = float("-inf")
    _sdpa(route, {"q": (1, 2, 6, 32), "k": (1, 2, 10, 32), "v": (1, 2, 10, 32)}, dtype, mask=float_mask)
    # a window that excludes every key of some rows
    _sdpa(route, {"q": (1, 1, 12, 32), "k": (1, 1, 5, 32), "v": (1, 1, 5, 32)}, dtype, window_size=(1, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_alibi_softcap_and_scale(route, dtype):
    shapes = {"q": (2, 4, 21, 32), "k": (2, 2, 34, 32), "v": (2, 2, 34, 32)}
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    _sdpa(route, shapes, dtype, alibi_slopes=slopes, is_causal=True)
    _sdpa(route, shapes, dtype, alibi_slopes=torch.rand(2, 4), softcap=3.0, scale=0.3, window_size=(9, 2))
    _sdpa(route, shapes, dtype, softcap=1.5, mask=torch.randn(1, 4, 21, 34))


@pytest.mark.parametrize("lengths, dtype", with_dtypes([(9, 30), (30, 9), (1, 50), (17, 17)], DTYPES))
def test_flash_attn_bottom_right_causal_window_alibi_softcap(route, lengths, dtype):
    Sq, Sk = lengths
    inputs = make_inputs({"q": (2, Sq, 4, 32), "k": (2, Sk, 2, 32), "v": (2, Sk, 2, 32)}, dtype, seed=7)
    slopes = torch.rand(2, 4)
    to_sdpa = lambda t: t.transpose(1, 2)  # noqa: E731
    for kw, okw in (({"causal": True}, {"causal": "bottom_right"}),
                    ({"window_size": (6, 2), "softcap": 2.0}, {"window": (6, 2), "align": "bottom_right",
                                                               "softcap": 2.0}),
                    ({"alibi_slopes": slopes, "causal": True}, {"causal": "bottom_right", "alibi_slopes": slopes})):
        ref, ref_lse = attention_fp64(*(to_sdpa(inputs[n]) for n in "qkv"), **okw)
        yard, yard_lse = torch_attention_same_dtype(*(to_sdpa(inputs[n]) for n in "qkv"), **okw)
        with kernel_route(route) as device:
            on = {n: inputs[n].detach().to(device) for n in "qkv"}
            kw_on = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
            out, lse, _ = mfa_torch.flash_attn_func(on["q"], on["k"], on["v"], return_attn_probs=True, **kw_on)
        assert_rule(f"out {kw}", to_sdpa(out.cpu()), yard, ref, dtype)
        assert_rule(f"lse {kw}", lse.cpu(), yard_lse, ref_lse, dtype)


@pytest.mark.parametrize("options, dtype", with_dtypes([{}, {"causal": True}, {"window_size": (4, 1)},
                                                       {"causal": True, "softcap": 5.0}], DTYPES))
def test_varlen(route, options, dtype):
    max_q, max_k, cu_q, cu_k, inputs = varlen_case(dtype)
    slopes = torch.rand(5, 4)
    ref, ref_lse = varlen_attention_fp64(inputs["q"], inputs["k"], inputs["v"], cu_q, cu_k,
                                         causal=options.get("causal", False),
                                         window=options.get("window_size", (-1, -1)),
                                         softcap=options.get("softcap", 0.0), alibi_slopes=slopes)
    with kernel_route(route) as device:
        on = {n: inputs[n].detach().to(device) for n in "qkv"}
        out, lse, _ = mfa_torch.flash_attn_varlen_func(on["q"], on["k"], on["v"], cu_q.to(device), cu_k.to(device),
                                                       max_q, max_k, alibi_slopes=slopes.to(device),
                                                       return_attn_probs=True, **options)
    # PyTorch has no varlen attention in every dtype to measure against: the dtype's epsilon bounds the error
    assert_rule("out", out.cpu(), None, ref, dtype)
    assert_rule("lse", lse.cpu(), None, ref_lse, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_dropout_matches_the_regenerated_keep_mask(route, dtype):
    """Forward with dropout equals the oracle with the keep mask of the debug entry point."""
    B, H, L, S, p = 2, 3, 14, 27, 0.3
    inputs = make_inputs({"q": (B, H, L, 32), "k": (B, H, S, 32), "v": (B, H, S, 32)}, dtype, seed=2)
    seed = torch.tensor([123456789012, 77], dtype=torch.int64)
    keep = dropout_keep_mask(123456789012, 77, B, H, L, S, p)
    ref, ref_lse = attention_fp64(inputs["q"], inputs["k"], inputs["v"], causal="upper_left", dropout_keep=keep,
                                  dropout_p=p)
    with kernel_route(route) as device:
        on = [inputs[n].detach().to(device) for n in "qkv"]
        out, stats = torch.ops.mfa.attention_forward(*on, None, None, None, None, 0, 0, 32 ** -0.5, -1, 0, False,
                                                     0.0, p, seed)
    assert_rule("out", out.cpu(), None, ref, dtype)
    assert_rule("lse", log_sum_exp(stats.cpu()).float(), None, ref_lse, dtype)


@pytest.mark.parametrize("L, dtype", with_dtypes([1, 3, 8], DTYPES))
def test_decode_splits_keys_across_threadgroups(route, L, dtype):
    """Short queries against long keys: the plan splits the keys and a combine pass merges them."""
    shapes = {"q": (1, 8, L, 32), "k": (1, 2, 700, 32), "v": (1, 2, 700, 32)}
    _sdpa(route, shapes, dtype, enable_gqa=True)
    _sdpa(route, shapes, dtype, enable_gqa=True, window_size=(300, 0))


@pytest.mark.parametrize("shape", [(0, 2, 5, 7), (2, 0, 5, 7), (2, 2, 0, 7), (2, 2, 5, 0)],
                         ids=["B=0", "H=0", "L=0", "S=0"])
def test_empty_sizes(route, shape):
    B, H, L, S = shape
    q, k, v = torch.randn(B, H, L, 32), torch.randn(B, H, S, 32), torch.randn(B, H, S, 8)
    with kernel_route(route) as device:
        out, lse = mfa_torch.scaled_dot_product_attention(q.to(device), k.to(device), v.to(device), return_lse=True)
    assert out.shape == (B, H, L, 8) and lse.shape == (B, H, L)
    assert torch.all(out.cpu() == 0) and torch.all(lse.cpu() == float("-inf"))


def _tiles_touching_the_allowed_region(allowed, group, block_q, block_k):
    """Tiles (threadgroup rows x key block) that intersect the region the causal/window structure allows, counted
    from the (L, S) allowed mask: a threadgroup's packed rows r cover queries r // group."""
    L, S = allowed.shape
    count = 0
    for row0 in range(0, L * group, block_q):
        queries = sorted({r // group for r in range(row0, min(row0 + block_q, L * group))})
        for key0 in range(0, S, block_k):
            count += bool(allowed[queries, key0:key0 + block_k].any())
    return count


@pytest.mark.parametrize("family", ["apple7", "apple9"])
@pytest.mark.parametrize("structure", [
    dict(left=-1, right=0, bottom_right=False), dict(left=-1, right=0, bottom_right=True),
    dict(left=20, right=5, bottom_right=False), dict(left=3, right=-1, bottom_right=True),
    dict(left=-1, right=-1, bottom_right=False)], ids=["causal", "causal-bottom-right", "window", "left-window-br",
                                                      "full"])
@pytest.mark.parametrize("sizes", [(150, 260, 2), (3, 900, 4)], ids=["prefill", "decode-split"])
def test_only_tiles_the_structure_allows_are_computed(route, family, structure, sizes):
    """The debug tile counter equals the number of tiles intersecting the allowed region: key blocks outside the
    causal/window band are skipped (no loads, no math)."""
    L, S, group = sizes
    B, Hk = 2, 1
    q, k, v = torch.randn(B, Hk * group, L, 32), torch.randn(B, Hk, S, 32), torch.randn(B, Hk, S, 32)
    left, right, bottom_right = structure["left"], structure["right"], structure["bottom_right"]
    with kernel_route(route) as device:
        out, _, tiles = metal_attention.forward(route, q.to(device), k.to(device), v.to(device), None, None, None,
                                                  None, 0, 0, 32 ** -0.5, left, right, bottom_right, 0.0, 0.0, None,
                                                  family=family, count_tiles=True)
    problem = metal_attention._problem(q, k, v, None, None, None, 0, 0, 1.0, left, right, bottom_right, 0.0, 0.0,
                                       None, family)
    forward = _C.plan_attention_forward(problem).launches[0]
    block_q, block_k = (int(dict(forward.defines)[n]) for n in ("MFA_BLOCK_Q", "MFA_BLOCK_K"))
    allowed = allowed_mask(L, S, window=(left, right), align="bottom_right" if bottom_right else "upper_left")
    expected = B * Hk * _tiles_touching_the_allowed_region(allowed, group, block_q, block_k)
    assert int(tiles.cpu().sum()) == expected
    if L > 100 and (left, right) != (-1, -1):  # the prefill cases do skip tiles
        assert expected < B * Hk * -(-L * group // block_q) * -(-S // block_k)
    ref, _ = attention_fp64(q, k, v, window=(left, right), align="bottom_right" if bottom_right else "upper_left")
    assert_rule("out", out.cpu(), None, ref, torch.float32)
