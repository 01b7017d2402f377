"""Numerical edge cases: NaN and +-inf inputs, -inf float masks, fully masked rows, scores near the float16 range,
bfloat16 error at 16k tokens, and regression rows 10, 11, 12 and 14 of facts/regressions.md.

Two routes run mfa_torch's own kernels here: "emulator" (the Metal kernels under the MSL emulator) and "reference"
(the chunked PyTorch kernels of mfa_torch/reference.py, reached through return_lse=True, which PyTorch's SDPA lacks).

NaN and inf semantics (documented deliberate differences from PyTorch):
- A NaN or inf in q, k or v reaches exactly the output rows whose allowed keys see it, as the fp64 oracle (and
  PyTorch's math backend without masks) computes. PyTorch's own CPU kernels disagree with each other: the flash
  kernel returns 0 for a query row holding a NaN (mfa_torch: NaN, like the math backend); the math backend lets a
  NaN key that is_causal hides from a row poison that row (mfa_torch: hidden keys have no influence, like the flash
  kernel and the oracle).
- A row whose scores hold a NaN gives NaN output and (on both routes) lse -inf, where the oracle's lse is NaN.
- An inf or NaN in v at a key that causal/window/mask hides from a row reaches that row if the row's tile includes
  the key (0 x inf = NaN, as in PyTorch's math backend) and not if the tile is skipped: tile-dependent, not asserted.
- Rows that no key may attend (fully masked, by a bool mask or a float mask of -inf) give 0, lse -inf and zero
  gradients, never NaN (as PyTorch 2.13's CPU kernels give 0; its MPS kernel gave NaN, regression row 6).
- Gradients recompute probabilities as exp(score - lse) with lse in float32 (FlashAttention's scheme): for scores
  beyond ~1e6 in magnitude lse's rounding (|lse| x 2^-24) makes gradients inaccurate, and beyond ~1e9 they overflow.
  Forward outputs stay exact to float rounding at any finite float32 score. Tests hold gradients to the oracle for
  scores up to ~2e5.
"""
import os
import platform

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import mfa_torch
from oracle import (assert_rule, attention_fp32_in_order, attention_fp64, make_inputs, max_err, tolerance,
                    torch_attention_same_dtype)

ROUTES = [pytest.param("emulator", marks=pytest.mark.emulator), "reference"]


def _ours(route, q, k, v, **kw):
    """mfa_torch's kernels on `route`: (out, lse)."""
    with mfa_torch.backend(route):
        return mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True, **kw)


def _torch_math(q, k, v, **kw):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kw)


def _assert_same_nonfinite_and_close(name, ours, want, atol=1e-5):
    """The same NaN and +-inf elements, and the finite ones close."""
    ours, want = ours.double(), want.double()
    assert torch.equal(ours.isnan(), want.isnan()), f"{name}: NaN pattern differs\n{ours.isnan().sum(-1)}\n" \
                                                    f"{want.isnan().sum(-1)}"
    assert torch.equal(ours.isposinf(), want.isposinf()) and torch.equal(ours.isneginf(), want.isneginf()), \
        f"{name}: inf pattern differs"
    finite = ours.isfinite()
    assert torch.allclose(ours[finite], want[finite], atol=atol, rtol=1e-4), f"{name}: finite values differ"


# ------------------------------------------------------------------------------------------------------------------
# NaN and inf inputs

SPECIALS = {  # (tensor, index (b, h, row, col), value)
    "nan-q-row": ("q", (0, 0, 2, 3), float("nan")),
    "nan-k-row": ("k", (0, 1, 4, 0), float("nan")),
    "nan-v": ("v", (0, 0, 5, 2), float("nan")),
    "inf-q": ("q", (0, 0, 1, 1), float("inf")),
    "neginf-k": ("k", (0, 0, 3, 1), -float("inf")),
    "inf-v": ("v", (0, 1, 0, 0), float("inf")),
    "neginf-v": ("v", (0, 1, 7, 4), -float("inf")),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_nan_and_inf_inputs_propagate(route, special, causal):
    """Against the fp64 oracle always, and against PyTorch's math backend (fp32, CPU) where no structure hides keys:
    the same NaN/inf elements and the same finite values."""
    torch.manual_seed(0)
    t = dict(q=torch.randn(1, 2, 6, 8), k=torch.randn(1, 2, 9, 8), v=torch.randn(1, 2, 9, 8))
    name, index, value = SPECIALS[special]
    t[name][index] = value
    out, _ = _ours(route, t["q"], t["k"], t["v"], is_causal=causal)
    ref, _ = attention_fp64(t["q"], t["k"], t["v"], causal="upper_left" if causal else None)
    if causal and name == "v":
        # A special value in v at a key hidden from a row reaches that row when the row's tile includes the key
        # (0 x inf = NaN, as in PyTorch's math backend and the oracle) and not when the tile is skipped: only the rows
        # that may attend the key have a defined answer.
        visible = torch.arange(6) >= index[2]
        out, ref = out[:, :, visible], ref[:, :, visible]
    _assert_same_nonfinite_and_close("vs oracle", out, ref)
    if not causal:
        _assert_same_nonfinite_and_close("vs torch math", out, _torch_math(t["q"], t["k"], t["v"]))
    assert out.numel() == 0 or not torch.isnan(out).all(), "one NaN input must not poison every row"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("special", ["nan-q", "nan-k-first-split", "inf-k-last-split", "nan-v"])
def test_nan_and_inf_propagate_through_split_kv_decoding(route, special):
    """Decoding shapes split the keys across threadgroups and combine the partial results (Metal route). Regression:
    a split whose scores held a NaN reported lse -inf like a split with no key, and when every other split had no key
    (a causal row, a NaN query) the combine wrote 0: the NaN vanished. Now as the oracle and the unsplit kernel."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 2, 1100, 8), torch.randn(1, 2, 1100, 8)
    causal = special == "nan-k-first-split"
    if special == "nan-q":
        q[0, 1, 1, 5] = float("nan")
    elif special == "nan-k-first-split":
        k[0, 0, 0, 2] = float("nan")  # the only keys the causal rows see are in the first split
    elif special == "inf-k-last-split":
        k[0, 1, 1099, 0] = float("inf")
    else:
        v[0, 1, 700, 3] = float("nan")
    out, _ = _ours(route, q, k, v, is_causal=causal, enable_gqa=True)
    ref, _ = attention_fp64(q, k, v, causal="upper_left" if causal else None)
    _assert_same_nonfinite_and_close("vs oracle", out, ref)
    assert not torch.isfinite(out).all()


@pytest.mark.parametrize("route", ROUTES)
def test_a_nan_key_outside_the_causal_band_does_not_reach_earlier_rows(route):
    """The documented difference from PyTorch's math backend: a key that is_causal hides from a row has no influence
    on it, NaN or not (PyTorch's flash kernel agrees; its math backend spreads the NaN to every row)."""
    q, k, v = torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    k[0, 0, 4, 0] = float("nan")
    out, lse = _ours(route, q, k, v, is_causal=True)
    assert torch.isfinite(out[0, 0, :4]).all() and torch.isfinite(lse[0, 0, :4]).all()
    assert torch.isnan(out[0, 0, 4:]).all()
    assert torch.isnan(_torch_math(q, k, v, is_causal=True)).all()  # PyTorch's math backend: every row


# ------------------------------------------------------------------------------------------------------------------
# -inf float masks and fully masked rows


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_neginf_float_masks_and_fully_masked_rows(route, dtype):
    """A float mask with scattered -inf entries and whole -inf rows.
    Every row as PyTorch (fp32 CPU, its flash and math kernels) and the oracle; rows with no key: output 0 (as
    PyTorch 2.13 gives too), lse -inf, every gradient finite and zero dq for those rows."""
    B, H, L, S, E = 2, 2, 9, 13, 16
    g = torch.Generator().manual_seed(4)
    mask = torch.randn(B, 1, L, S, generator=g)
    mask[torch.rand(B, 1, L, S, generator=g) < 0.4] = float("-inf")
    mask[0, 0, 3] = float("-inf")
    mask[1, 0, 0] = float("-inf")
    mask[:, :, 5, :6] = float("-inf")  # row 5 keeps keys 6.. only
    inputs = make_inputs({"q": (B, H, L, E), "k": (B, H, S, E), "v": (B, H, S, E)}, dtype, seed=6)
    out, lse = _ours(route, *(inputs[n] for n in "qkv"), attn_mask=mask.to(dtype))
    dead = torch.isneginf(mask).all(-1).expand(B, H, L)
    assert dead.any()
    assert torch.all(out[dead] == 0) and torch.all(torch.isneginf(lse[dead])) and torch.isfinite(lse[~dead]).all()
    grads = torch.autograd.grad(out, [inputs[n] for n in "qkv"], torch.randn(out.shape).to(dtype))
    assert all(torch.isfinite(gr).all() for gr in grads)
    assert torch.all(grads[0][dead] == 0)
    ref, ref_lse = attention_fp64(*(inputs[n] for n in "qkv"), mask=mask)
    yard, _ = torch_attention_same_dtype(*(inputs[n].detach() for n in "qkv"), mask=mask.to(dtype))
    assert_rule("out (rows with keys)", out[~dead], yard[~dead], ref[~dead], dtype)
    assert_rule("lse", lse, None, ref_lse, dtype)
    for torch_out in (F.scaled_dot_product_attention(*(inputs[n].detach().float() for n in "qkv"), attn_mask=mask),
                      _torch_math(*(inputs[n].detach().float() for n in "qkv"), attn_mask=mask)):
        assert torch.allclose(out.float(), torch_out, atol=3e-3 if dtype == torch.float16 else 1e-5)


def test_pytorchs_cpu_kernels_are_pinned_for_the_yardsticks():
    """tests/host_pins.py pins the PyTorch CPU code the tolerances are computed with (see there)."""
    import host_pins
    assert torch.get_num_threads() == host_pins.THREADS
    if host_pins.ISA and platform.machine() == "x86_64":
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"
        assert all(os.environ[name] == value for name, value in host_pins.ISA.items())


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", ["S=1", "window=(0,0)"])
def test_one_key_per_row_gives_exactly_zero_q_and_k_gradients(route, dtype, shape):
    """A row that attends one key has P = 1 there, so dS = P (dP - D) is exactly 0 and so are dq and dk, as in
    PyTorch's math backward. Regression: D = rowsum(dO * O) summed in another order than dP = dO V^T left a rounding
    residue (dk errors of 1e-5 in float32 with E = 96, S = 1, 6 query heads on one K/V head, where PyTorch's error
    is 0). Now D is formed as dP is (Metal kernels) or as rowsum(P * dP) (reference route)."""
    g = torch.Generator().manual_seed(13)
    L, S, E = (64, 1, 96) if shape == "S=1" else (40, 40, 40)
    q = torch.randn(2, 6, L, E, generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(2, 1, S, E, generator=g).to(dtype).requires_grad_() for _ in range(2))
    grad = torch.randn(2, 6, L, E, generator=g).to(dtype)
    window = None if shape == "S=1" else (0, 0)
    with mfa_torch.backend(route):
        out, _ = mfa_torch.scaled_dot_product_attention(q, k, v, enable_gqa=True, window_size=window,
                                                        return_lse=True)  # mfa_torch's kernels on every route
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    assert torch.count_nonzero(dq) == 0 and torch.count_nonzero(dk) == 0
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, _ = attention_fp64(*ref_leaves, window=window)
    assert_rule("dv", dv, None, torch.autograd.grad(ref, ref_leaves[2], grad.double())[0], dtype)


@pytest.mark.parametrize("route", ROUTES)
def test_every_row_masked_gives_zero_never_nan(route):
    q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for n in (4, 6, 6))
    for mask in (torch.zeros(1, 1, 4, 6, dtype=torch.bool), torch.full((1, 1, 4, 6), float("-inf"))):
        out, lse = _ours(route, q, k, v, attn_mask=mask)
        assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
        for gr in torch.autograd.grad(out.sum(), (q, k, v)):
            assert torch.all(gr == 0)


# ------------------------------------------------------------------------------------------------------------------
# float16 scores near (and past) the half range


def _near_range_inputs(magnitude, L=7, S=11, E=16):
    """float16-exact q, k whose dot products are all within a few percent of `magnitude`, differing by a few units
    so that the softmax spreads over several keys; v random."""
    g = torch.Generator().manual_seed(8)
    side = torch.tensor((magnitude / E) ** 0.5).half()
    ulp = (torch.nextafter(side, torch.tensor(float("inf")).half()) - side).float()
    sigma = torch.sign(torch.randn(E, generator=g))
    steps = lambda *shape: torch.randint(-2, 3, shape, generator=g).float()  # noqa: E731
    q = ((side.float() + ulp * steps(1, 2, L, E)) * sigma).half()
    k = ((side.float() + ulp * steps(1, 2, S, E)) * sigma).half()
    v = torch.randn(1, 2, S, E, generator=g).half()
    scores = q.double() @ k.double().transpose(-1, -2)
    assert scores.min() > 0.97 * magnitude and scores.max() < 1.03 * magnitude
    assert (scores.amax(-1) - scores.amin(-1)).min() > 0.1  # the softmax is not one-hot
    return q, k, v, torch.randn(1, 2, L, E, generator=g)


@pytest.mark.emulator
@pytest.mark.parametrize("magnitude", [60000.0, 2.0e5], ids=["q.k~6e4", "q.k~2e5"])
def test_float16_scores_near_the_half_range_do_not_overflow(magnitude):
    """float16 q and k whose dot products are all close to `magnitude` (60000 is near float16's largest value 65504;
    2e5 is beyond it). The kernels accumulate the scores and the softmax in float: output and lse within the rule
    against the fp64 oracle (PyTorch in float32 as the yardstick: its float16 kernel overflows), gradients finite.
    (Gradient accuracy at such scores: the float32 test below; in float16 dq is dominated by the rounding of the
    float16 output that D = rowsum(dO * O) reads, on every route.)"""
    q, k, v, grad = _near_range_inputs(magnitude)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = _ours("emulator", *leaves, scale=1.0)
    ref, ref_lse = attention_fp64(q, k, v, scale=1.0)
    yard = _torch_math(q.float(), k.float(), v.float(), scale=1.0)
    assert_rule("out", out, yard, ref, torch.float16)
    assert_rule("lse", lse, None, ref_lse, torch.float32)
    grads = torch.autograd.grad(out, leaves, grad.half())
    assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("magnitude", [1000.0, 60000.0, 2.0e5], ids=["q.k~1e3", "q.k~6e4", "q.k~2e5"])
def test_gradients_stay_accurate_at_large_scores(route, magnitude):
    """float32 inputs with scores all near `magnitude`: output and every gradient within twice PyTorch's float32
    error (its math kernel saves the probabilities) against the fp64 oracle, with nothing added for the size of the
    scores. The gradient of q is a sum over keys whose terms cancel (sum_j dS_ij = 0, and the keys share a large
    common part), so it magnifies any disagreement between the probabilities the forward used and those the
    backward recomputes. History: the Metal forward once took every score to base 2 (dq off by 80% at 6e4); the
    backward then recomputed exp(score - lse) from a float32 lse rounded by |lse| x 2^-24 (FlashAttention's limit);
    and autograd outside the `backend` block ran PyTorch's backward after the emulator's forward, whose scores were
    rounded otherwise, host by host (dq off by 7% at 1e3 on one host, not on another). Now the backward recomputes
    exp(s - max) / sum from the forward's own scores and stats, on the forward's backend."""
    q, k, v, grad = (t.float() for t in _near_range_inputs(magnitude))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = _ours(route, *leaves, scale=1.0)
    grads = torch.autograd.grad(out, leaves, grad)  # outside the backend block, as users write it
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref, _ = attention_fp64(*ref_leaves, scale=1.0)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    yard_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    yard = _torch_math(*yard_leaves, scale=1.0)
    yards = [(yard, *torch.autograd.grad(yard, yard_leaves, grad)), attention_fp32_in_order(q, k, v, grad, 1.0)]
    # PyTorch's error here is its BLAS kernel's rounding of these ill-conditioned scores, which differs by host (on
    # this kind of machine its dot products are 3x as accurate as any in-order float32 sum); so the yardstick is the
    # larger of PyTorch's error and that of float32 in a fixed order, the same on every host.
    for i, (name, ours, want) in enumerate(zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads))):
        assert_rule(name, ours, max((y[i] for y in yards), key=lambda y: max_err(y, want)), want, torch.float32)


# ------------------------------------------------------------------------------------------------------------------
# regression rows 10, 11, 12, 14


def test_row10_bfloat16_error_at_16k_tokens_within_twice_pytorchs():
    """Regression row 10 (pytorch#190791: bf16 attention error grows with sequence length, 2.4% at ~14k tokens).
    At L = S = 16384 in bfloat16, mfa_torch's error against an fp32 computation on the same (bf16-rounded) inputs is
    at most twice PyTorch's own bfloat16 error plus one bf16 ulp. On the reference route: the emulator would need
    hours at 16k tokens; the Metal kernels use the same fp32 accumulation and are held to the same rule at small
    sizes by the kernel tests."""
    torch.manual_seed(10)
    L, E = 16384, 64
    q, k, v = (torch.randn(1, 1, L, E).bfloat16() for _ in range(3))
    q = (q.float() * 2).bfloat16()  # sharper attention than random inputs give: errors are not averaged away
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    theirs = F.scaled_dot_product_attention(q, k, v)
    with mfa_torch.backend("reference"):
        assert "reference" in mfa_torch.explain(q, k, v, return_lse=True)
        ours, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
    assert_rule("out", ours, theirs, want, torch.bfloat16)
    relative = (ours.float() - want).norm() / want.norm()
    assert relative < 0.01, f"relative error {relative:.4f}"


@pytest.mark.emulator
def test_row11_no_uninitialised_memory_reaches_the_output_fp16():
    """Regression row 11 (diffusers#11229: NaN from an uninitialised buffer in sliced attention, fp16, D = 64).
    Sliced calls (views into a larger batch, lengths that fill no block exactly) give the full call's rows; and
    varlen tokens past cu_seqlens_q[-1] get 0 and lse -inf. Freed NaN memory is put where the outputs will be
    allocated first, so a kernel (or a host path) that leaves any output element unwritten shows NaN. The varlen
    case caught the Metal route leaving those tokens uninitialised."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(4, 2, 77, 64, generator=g).half() for _ in range(3))
    with mfa_torch.backend("emulator"):
        full = mfa_torch.scaled_dot_product_attention(q, k, v)
        for b in range(4):
            del_me = torch.full((1, 2, 77, 64), float("nan"), dtype=torch.float16)
            del del_me
            sliced = mfa_torch.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1])
            assert torch.isfinite(sliced).all()
            assert torch.equal(sliced, full[b:b + 1])
        total, used = 40, 29
        cu_q = torch.tensor([0, 13, used], dtype=torch.int32)
        cu_k = torch.tensor([0, 20, 41], dtype=torch.int32)
        qv, kv, vv = torch.randn(total, 2, 64).half(), torch.randn(41, 2, 64).half(), torch.randn(41, 2, 64).half()
        for _ in range(3):
            del_me = (torch.full((1, 2, total, 64), float("nan"), dtype=torch.float16),
                      torch.full((1, 2, total), float("nan")))
            del del_me
            out, lse, _ = mfa_torch.flash_attn_varlen_func(qv, kv, vv, cu_q, cu_k, 16, 21, return_attn_probs=True)
            assert torch.all(out[used:] == 0) and torch.all(torch.isneginf(lse[:, used:]))
            assert torch.isfinite(out[:used]).all() and torch.isfinite(lse[:, :used]).all()


@pytest.mark.emulator
@pytest.mark.parametrize("scale_q, scale_k", [(1.0, 1.0), (30.0, 30.0), (1e15, 1e15), (1e-20, 1e20)],
                         ids=["unit", "sharp", "huge", "lopsided"])
def test_row12_finite_bfloat16_inputs_never_give_nan(scale_q, scale_k):
    """Regression row 12 (ComfyUI#15804: random all-NaN attention output from finite bf16 inputs, LTX video). Finite
    bfloat16 inputs over a wide dynamic range (scores from ~1 to ~1e31, still finite in float32), with a causal band
    and a split-KV decode shape: output, lse and gradients finite and equal to the oracle."""
    g = torch.Generator().manual_seed(12)
    for L, S, causal in ((37, 45, True), (2, 700, False)):
        q = (torch.randn(1, 4, L, 32, generator=g) * scale_q).bfloat16()
        k = (torch.randn(1, 2, S, 32, generator=g) * scale_k).bfloat16()
        v = torch.randn(1, 2, S, 32, generator=g).bfloat16()
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = _ours("emulator", *leaves, enable_gqa=True, is_causal=causal)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        ref, _ = attention_fp64(q, k, v, causal="upper_left" if causal else None)
        assert_rule("out", out, None, ref, torch.bfloat16)
        if causal and scale_q * scale_k < 1e6:  # gradients: see the module docstring on lse's precision
            grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
            assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.emulator
@pytest.mark.parametrize("mask_kind", ["bool", "float-min", "float-neginf"])
def test_row14_left_padding_gives_no_nan(mask_kind):
    """Regression row 14 (sentence-transformers#3498: NaN embeddings with left padding, Qwen3 embedding). A causal
    mask combined with left padding leaves the padded query rows without any key: they give 0 (bool or -inf masks)
    or a finite average (transformers' finfo.min masks), never NaN, with finite gradients; the real tokens' rows equal
    the same sequence run alone without padding."""
    B, H, L, E, dtype = 3, 2, 10, 32, torch.float16
    pads = [0, 3, 7]
    g = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(B, H, L, E, generator=g).half() for _ in range(3))
    real = torch.arange(L)[None, :] >= torch.tensor(pads)[:, None]  # (B, S): key is a real token
    allowed = torch.ones(L, L, dtype=torch.bool).tril()[None] & real[:, None, :]  # (B, L, S)
    if mask_kind == "bool":
        mask = allowed[:, None]
    else:
        fill = torch.finfo(dtype).min if mask_kind == "float-min" else float("-inf")
        mask = torch.zeros(B, 1, L, L, dtype=dtype).masked_fill(~allowed[:, None], fill)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = _ours("emulator", *leaves, attn_mask=mask)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    assert all(torch.isfinite(gr).all() for gr in grads)
    for b, pad in enumerate(pads):
        alone, _ = attention_fp64(q[b:b + 1, :, pad:], k[b:b + 1, :, pad:], v[b:b + 1, :, pad:], causal="upper_left")
        assert_rule(f"sequence {b}", out[b:b + 1, :, pad:], None, alone, dtype)
        if mask_kind != "float-min":
            assert torch.all(out[b, :, :pad] == 0)
