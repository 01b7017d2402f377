"""The Metal attention backward (shaders/attention_backward_delta.metal, attention_backward_dq.metal,
attention_backward_dkdv.metal) through autograd of the public API: every gradient against the fp64 oracle with the
2x-PyTorch-error rule, under the emulator here and on the GPU with `pytest -m mps`; determinism, dropout, tile
skipping and the O(B x H x L) temporaries."""
import pytest
import torch

import mfa_torch
from mfa_torch import _C
from mfa_torch.metal import attention as metal_attention
from mfa_torch.reference import dropout_keep_mask
from kernel_routes import KERNEL_ROUTES, kernel_route, varlen_case, with_dtypes
from oracle import (DTYPES, allowed_mask, attention_fp64, check_against_oracle, make_inputs,
                    varlen_attention_fp64)
from sdpa_check import sdpa_check

pytestmark = pytest.mark.parametrize("route", KERNEL_ROUTES)


def _grads(route, shapes, dtype, **kw):
    """Output and the gradients of q, k, v (and of a float mask that requires grad) against the oracle."""
    with kernel_route(route) as device:
        return sdpa_check(shapes, dtype, device=device, **kw)


@pytest.mark.parametrize("dims, dtype", with_dtypes([(1, 1), (8, 8), (40, 40), (64, 64), (72, 72), (96, 96),
                                                     (128, 128), (160, 160), (192, 192), (256, 256), (32, 24),
                                                     (40, 128), (256, 8)], DTYPES))
def test_every_head_dim(route, dims, dtype):
    E, Ev = dims
    _grads(route, {"q": (1, 2, 13, E), "k": (1, 2, 21, E), "v": (1, 2, 21, Ev)}, dtype)


@pytest.mark.parametrize("case, dtype", with_dtypes([
    dict(lengths=(1, 40)), dict(lengths=(40, 1)), dict(lengths=(45, 70), is_causal=True),
    dict(lengths=(70, 45), is_causal=True), dict(lengths=(41, 70), window_size=(5, 3)),
    dict(lengths=(41, 70), window_size=(16, 0)), dict(lengths=(41, 70), window_size=(-1, 4)),
    dict(lengths=(33, 33), scale=0.3, softcap=2.0), dict(lengths=(21, 34), alibi_slopes=torch.tensor([0.5, 0.25]))],
    DTYPES))
def test_lengths_causal_windows_softcap_alibi(route, case, dtype):
    case = dict(case)
    L, S = case.pop("lengths")
    _grads(route, {"q": (2, 2, L, 32), "k": (2, 2, S, 32), "v": (2, 2, S, 32)}, dtype, **case)


@pytest.mark.parametrize("heads, dtype", with_dtypes([(4, 2), (8, 1), (6, 3)], DTYPES))
def test_gqa_sums_over_the_group_without_atomics(route, heads, dtype):
    Hq, Hk = heads
    _grads(route, {"q": (2, Hq, 13, 32), "k": (2, Hk, 29, 32), "v": (2, Hk, 29, 32)}, dtype, is_causal=True)


@pytest.mark.parametrize("mask_shape, dtype", with_dtypes([(1, 1, 17, 23), (2, 3, 17, 23), (2, 1, 1, 23)], DTYPES))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_through_broadcast_strides(route, mask_shape, dtype, kind):
    g = torch.Generator().manual_seed(9)
    mask = torch.rand(mask_shape, generator=g) > 0.3 if kind == "bool" else torch.randn(mask_shape, generator=g) * 2
    _grads(route, {"q": (2, 3, 17, 32), "k": (2, 3, 23, 32), "v": (2, 3, 23, 32)}, dtype, mask=mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_mask_gradient_of_a_full_float_mask(route, dtype):
    mask = torch.randn(2, 3, 17, 23)
    _grads(route, {"q": (2, 3, 17, 32), "k": (2, 3, 23, 32), "v": (2, 3, 23, 32)}, dtype, mask=mask, mask_grad=True,
           window_size=(6, 6))


def test_mask_gradient_of_a_broadcast_mask_takes_the_reference_route_visibly(route):
    mask = torch.randn(1, 1, 17, 23)
    with pytest.warns(UserWarning, match="gradient of a mask broadcast"):
        _grads(route, {"q": (2, 3, 17, 32), "k": (2, 3, 23, 32), "v": (2, 3, 23, 32)}, torch.float32, mask=mask,
               mask_grad=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_rows_that_attend_nothing_get_zero_gradients(route, dtype):
    mask = torch.ones(1, 1, 6, 10, dtype=torch.bool)
    mask[..., 1, :] = False
    inputs = make_inputs({"q": (1, 2, 6, 32), "k": (1, 2, 10, 32), "v": (1, 2, 10, 32)}, dtype, seed=3)
    with kernel_route(route) as device:
        on = {n: inputs[n].to(device) for n in "qkv"}
        out = mfa_torch.scaled_dot_product_attention(on["q"], on["k"], on["v"], attn_mask=mask.to(device))
        out.sum().backward()
    assert torch.all(inputs["q"].grad[:, :, 1] == 0)
    for name in "qkv":
        assert torch.isfinite(inputs[name].grad).all()
    _grads(route, {"q": (1, 2, 6, 32), "k": (1, 2, 10, 32), "v": (1, 2, 10, 32)}, dtype, mask=mask)


@pytest.mark.parametrize("lengths, dtype", with_dtypes([(9, 30), (30, 9), (1, 50)], DTYPES))
def test_flash_attn_bottom_right(route, lengths, dtype):
    Sq, Sk = lengths
    inputs = make_inputs({"q": (2, Sq, 4, 32), "k": (2, Sk, 2, 32), "v": (2, Sk, 2, 32)}, dtype, seed=7)
    slopes = torch.rand(2, 4)
    to_sdpa = lambda t: t.transpose(1, 2)  # noqa: E731
    okw = {"causal": "bottom_right", "alibi_slopes": slopes, "softcap": 3.0}

    def ours(t):
        with kernel_route(route) as device:
            return mfa_torch.flash_attn_func(*(t[n].to(device) for n in "qkv"), causal=True,
                                             alibi_slopes=slopes.to(device), softcap=3.0).cpu()

    def oracle(t):
        return to_sdpa(attention_fp64(*(to_sdpa(t[n]) for n in "qkv"), **okw)[0])

    check_against_oracle(ours, oracle, None, inputs, dtype)


@pytest.mark.parametrize("options, dtype", with_dtypes([{"causal": True}, {"window_size": (4, 1)}, {}], DTYPES))
def test_varlen(route, options, dtype):
    max_q, max_k, cu_q, cu_k, inputs = varlen_case(dtype)

    def ours(t):
        with kernel_route(route) as device:
            return mfa_torch.flash_attn_varlen_func(*(t[n].to(device) for n in "qkv"), cu_q.to(device),
                                                    cu_k.to(device), max_q, max_k, **options).cpu()

    def oracle(t):
        return varlen_attention_fp64(t["q"], t["k"], t["v"], cu_q, cu_k, causal=options.get("causal", False),
                                     window=options.get("window_size", (-1, -1)))[0]

    check_against_oracle(ours, oracle, None, inputs, dtype)


@pytest.mark.parametrize("dtype, dim", [(torch.float32, 32), (torch.float16, 32), (torch.bfloat16, 32),
                                        (torch.float16, 512)],  # 512: O's column slices share each P
                         ids=["fp32", "fp16", "bf16", "fp16-D512"])
def test_dropout_gradients_match_the_regenerated_keep_mask(route, dtype, dim):
    B, H, L, S, p, seed, offset = 2, 3, 14, 27, 0.25, 987654321, 1000
    inputs = make_inputs({"q": (B, H, L, dim), "k": (B, H, S, dim), "v": (B, H, S, dim)}, dtype, seed=2)
    keep = dropout_keep_mask(seed, offset, B, H, L, S, p)
    seed_tensor = torch.tensor([seed, offset], dtype=torch.int64)

    def ours(t):
        with kernel_route(route) as device:
            out, _ = torch.ops.mfa.attention_forward(*(t[n].to(device) for n in "qkv"), None, None, None, None, 0, 0,
                                                     dim ** -0.5, 9, 0, False, 0.0, p, seed_tensor)
        return out.cpu()

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], causal="upper_left", window=(9, 0), dropout_keep=keep,
                              dropout_p=p, scale=dim ** -0.5)[0]

    check_against_oracle(ours, oracle, None, inputs, dtype)


def test_two_runs_give_bitwise_identical_gradients(route):
    inputs = make_inputs({"q": (2, 8, 37, 64), "k": (2, 2, 70, 64), "v": (2, 2, 70, 48)}, torch.bfloat16, seed=4)
    seed = torch.tensor([5, 0], dtype=torch.int64)
    grads = []
    for _ in range(2):
        with kernel_route(route) as device:
            on = [inputs[n].detach().to(device) for n in "qkv"]
            out, lse = torch.ops.mfa.attention_forward(*on, None, None, None, None, 0, 0, 0.125, -1, 0, False, 0.0,
                                                       0.1, seed)
            grads.append(torch.ops.mfa.attention_backward(torch.ones_like(out), *on, out, lse, None, None, None, None,
                                                          0, 0, 0.125, -1, 0, False, 0.0, 0.1, seed, False))
    for a, b in zip(grads[0][:3], grads[1][:3]):
        assert torch.equal(a.cpu(), b.cpu())


@pytest.mark.parametrize("structure", [dict(left=-1, right=0, bottom_right=False),
                                       dict(left=20, right=5, bottom_right=False),
                                       dict(left=3, right=-1, bottom_right=True)], ids=["causal", "window", "left-br"])
def test_backward_kernels_only_compute_tiles_the_structure_allows(route, structure):
    L, S, group, B = 150, 260, 2, 2
    q, k, v = torch.randn(B, group, L, 32), torch.randn(B, 1, S, 32), torch.randn(B, 1, S, 32)
    left, right, bottom_right = structure["left"], structure["right"], structure["bottom_right"]
    args = (None, None, None, None, 0, 0, 32 ** -0.5, left, right, bottom_right, 0.0, 0.0, None)
    with kernel_route(route) as device:
        on = [t.to(device) for t in (q, k, v)]
        out, lse = metal_attention.forward(route, *on, *args)
        *_, dq_tiles, dkdv_tiles = metal_attention.backward(route, torch.ones_like(out), *on, out, lse, *args, False,
                                                            count_tiles=True)
    problem = metal_attention._problem(q, k, v, None, None, None, 0, 0, 1.0, left, right, bottom_right, 0.0, 0.0,
                                       None, "apple9")
    _, dq_launch, dkdv_launch = _C.plan_attention_backward(problem, False).launches
    allowed = allowed_mask(L, S, window=(left, right), align="bottom_right" if bottom_right else "upper_left")
    block_q, block_k = (int(dict(dq_launch.defines)[n]) for n in ("MFA_BLOCK_Q", "MFA_BLOCK_K"))
    expected_dq = sum(bool(allowed[sorted({r // group for r in range(r0, min(r0 + block_q, L * group))}),
                                   j0:j0 + block_k].any())
                      for r0 in range(0, L * group, block_q) for j0 in range(0, S, block_k))
    block_kv, block_q = (int(dict(dkdv_launch.defines)[n]) for n in ("MFA_BLOCK_KV", "MFA_BLOCK_Q"))
    expected_dkdv = group * sum(bool(allowed[i0:i0 + block_q, j0:j0 + block_kv].any())
                                for j0 in range(0, S, block_kv) for i0 in range(0, L, block_q))
    assert int(dq_tiles.cpu().sum()) == B * expected_dq
    assert int(dkdv_tiles.cpu().sum()) == B * expected_dkdv
    assert expected_dkdv < group * -(-S // block_kv) * -(-L // block_q)  # the band skipped some tiles


def test_row9_training_memory_is_linear_in_L(route):
    """Regression row 9 (pytorch#179294: no fused backward, training materialises L x S): the backward plan's
    temporaries are D (one float per query row) and nothing else, at any L; and a training step runs through it."""
    for L in (1024, 16384):
        problem = metal_attention._problem(torch.empty(2, 8, L, 64), torch.empty(2, 2, L, 64),
                                           torch.empty(2, 2, L, 64), None, None, None, 0, 0, 0.125, -1, 0, False,
                                           0.0, 0.0, None, "apple9")
        plan = _C.plan_attention_backward(problem, False)
        assert {t.name: t.numel for t in plan.temporaries} == {"delta": 2 * 8 * L}
    _grads(route, {"q": (2, 4, 65, 64), "k": (2, 2, 65, 64), "v": (2, 2, 65, 64)}, torch.float16, is_causal=True)
