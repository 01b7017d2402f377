"""Head dims past 256 on the Metal kernels: E to 576 and Ev to 512 (DeepSeek V2/V3's absorbed latent attention has
E = 576, Ev = 512), forward and backward under the emulator against the fp64 oracle with the 2x-PyTorch-error rule.

Where an accumulator (O, dQ, or dK and dV) would pass the register limit, the planners cut it into column slices, one
SIMD-group each, sharing each block's scores (O: P; dQ: dS, K and V staged in chunks; dK and dV: P^T and dS^T, Q and
dO staged in chunks). Each case asserts the paths its plans take, so a planner change cannot quietly move it off
them."""
import pytest
import torch

import mfa_torch
from mfa_torch.metal import attention as metal_attention
from kernel_routes import FULL_MATRIX, recorded_plans
from oracle import assert_rule, attention_fp64, check_against_oracle, make_inputs, torch_attention_same_dtype
from sdpa_check import sdpa_check

pytestmark = pytest.mark.emulator

FLOAT_MASK = object()  # a random float mask of the call's shape, with its gradient


def _sliced(plans):
    """The kernels that cut their accumulators into column slices."""
    sliced = set()
    for launch in (launch for plan in plans for launch in plan.launches):
        d = dict(launch.defines)
        name = launch.kernel.removeprefix("attention_").removeprefix("backward_")
        columns = {"forward": "MFA_VALUE_DIM", "dq": "MFA_HEAD_DIM"}.get(name)
        if (columns and int(d[columns]) > int(d["MFA_SLICE_DIM"])) or int(d.get("MFA_SLICES", 1)) > 1:
            sliced.add(name)
    return sliced


EVERY_ACCUMULATOR = {"forward", "dq", "dkdv"}
CASES = [  # (family, dtype, E, Ev, options, sliced)
    ("apple9", torch.float16, 576, 512, dict(is_causal=True), EVERY_ACCUMULATOR),
    ("apple7", torch.float32, 576, 512, dict(window_size=(6, 3)), EVERY_ACCUMULATOR),
    ("apple7", torch.bfloat16, 517, 389, dict(softcap=20.0), {"dq", "dkdv"}),  # bfloat widened on M1
    ("apple9", torch.float32, 1, 512, dict(is_causal=True), {"forward", "dkdv"}),  # dK's second slice holds none
    ("apple9", torch.float16, 512, 512, dict(mask=FLOAT_MASK), EVERY_ACCUMULATOR),  # and the mask's gradient
]


@pytest.mark.parametrize("family, dtype, E, Ev, options, sliced", CASES,
                         ids=lambda x: str(x).removeprefix("torch.") if not isinstance(x, (dict, set)) else None)
def test_large_head_dims_forward_and_backward(monkeypatch, family, dtype, E, Ev, options, sliced):
    monkeypatch.setenv("MFA_TORCH_GPU_FAMILY", family)
    plans = recorded_plans(monkeypatch)
    shapes = {"q": (1, 4, 13, E), "k": (1, 2, 21, E), "v": (1, 2, 21, Ev)}
    if options.get("mask") is FLOAT_MASK:
        options = dict(options, mask=torch.randn(1, 4, 13, 21, generator=torch.Generator().manual_seed(5)),
                       mask_grad=True)
    with mfa_torch.backend("emulator"):
        assert mfa_torch.explain(*(torch.empty(s) for s in shapes.values()), enable_gqa=True).startswith(
            "route: emulator")
        sdpa_check(shapes, dtype, return_lse=True, **options)
    assert _sliced(plans) == sliced


def test_latent_attention_decoding_with_sinks():
    """One query for each of 16 heads over one shared latent K/V head (E = 576, Ev = 512), with sinks: the keys are
    split (flash-decoding) and O is sliced; output, lse and the gradients of q, k, v and the sinks."""
    dtype = torch.float16
    inputs = make_inputs({"q": (1, 16, 1, 576), "k": (1, 1, 300, 576), "v": (1, 1, 300, 512), "sinks": (16,)}, dtype,
                         seed=11)
    inputs["sinks"] = inputs["sinks"].detach().float().requires_grad_()

    def ours(t):
        with mfa_torch.backend("emulator"):
            return mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], enable_gqa=True, sinks=t["sinks"],
                                                          return_lse=True)

    check_against_oracle(ours, lambda t: attention_fp64(t["q"], t["k"], t["v"], sinks=t["sinks"]),
                         lambda t: torch_attention_same_dtype(t["q"], t["k"], t["v"], sinks=t["sinks"]), inputs,
                         dtype, check_lse=True)


def test_varlen_with_the_largest_head_dims(monkeypatch):
    """Packed sequences of different lengths (flash_attn_varlen_func) at E = 576, Ev = 512, causal."""
    plans = recorded_plans(monkeypatch)
    lengths = [5, 12, 1]
    cu = torch.tensor([0, 5, 17, 18], dtype=torch.int32)
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(18, 2, 576, generator=g).half().requires_grad_() for _ in range(2))
    v = torch.randn(18, 2, 512, generator=g).half().requires_grad_()
    with mfa_torch.backend("emulator"):
        out = mfa_torch.flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=True)
    grad = torch.randn(out.shape, generator=g).half()
    ours = (out, *torch.autograd.grad(out, (q, k, v), grad))
    start = 0
    for n in lengths:  # each sequence alone, against the fp64 oracle
        piece = [t.detach()[start:start + n].transpose(0, 1)[None].double().requires_grad_() for t in (q, k, v)]
        ref, _ = attention_fp64(*piece, causal="upper_left")
        refs = (ref, *torch.autograd.grad(ref, piece, grad[start:start + n].transpose(0, 1)[None].double()))
        same = [t.detach()[start:start + n].transpose(0, 1)[None].requires_grad_() for t in (q, k, v)]
        t_out = torch_attention_same_dtype(*same, causal="upper_left")[0]
        t_all = (t_out, *torch.autograd.grad(t_out, same, grad[start:start + n].transpose(0, 1)[None]))
        for name, a, r, t in zip(("out", "dq", "dk", "dv"), ours, refs, t_all):
            assert_rule(name, a[start:start + n].transpose(0, 1)[None], t, r, torch.float16)
        start += n
    assert _sliced(plans) == EVERY_ACCUMULATOR


@pytest.mark.skipif(not FULL_MATRIX, reason="checked builds of these variants take minutes: MFA_TORCH_FULL_MATRIX=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_largest_head_dims_under_the_bounds_checker(dtype):
    """checks="bounds" (exact-size buffers): the slices' column offsets, dQ's chunks of K and V and dK/dV's chunks of
    Q and dO stay inside their tensors; E = 572, Ev = 508 leave the padded last tiles and chunks partial."""
    g = torch.Generator().manual_seed(3)
    B, Hq, Hk, L, S, E, Ev = 1, 2, 1, 11, 19, 572, 508
    q, k = torch.randn(B, Hq, L, E, generator=g).to(dtype), torch.randn(B, Hk, S, E, generator=g).to(dtype)
    v = torch.randn(B, Hk, S, Ev, generator=g).to(dtype)
    args = (q, k, v, None, None, None, None, L, S, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
    out, stats = metal_attention.forward("emulator", *args, family="apple7", checks="bounds")
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref, _ = attention_fp64(*leaves, scale=E ** -0.5)
    assert_rule("out", out, None, ref, dtype)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    grads = metal_attention.backward("emulator", grad, q, k, v, out, stats, *args[3:], False, family="apple7",
                                     checks="bounds")
    for name, ours, want in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref, leaves, grad.double())):
        assert_rule(name, ours, None, want, dtype)
