"""Hypothesis fuzz of bad input: every public function (scaled_dot_product_attention, explain, flash_attn_func,
flash_attn_varlen_func, flash_attn_with_kvcache (which must also leave the cache unwritten), matmul, linear) and the raw ops (torch.ops.mfa.attention_forward / attention_backward /
gemm) get a valid call with exactly one thing made invalid (a shape, rank, dtype, device, cu_seqlens value, window,
mask, scale, softcap, dropout, NaN/inf scalar, ...). Each must raise a RuntimeError (what PyTorch's SDPA and
FlashAttention raise; mfa_torch's own errors are also ValueError or TypeError) whose message names the argument,
never return a result and never crash the process.

The public functions and the raw ops on the reference route run in this process (their kernels are PyTorch
operations, which raise rather than crash). The raw ops on backend "emulator" run in a child process: a request
that slipped through validation would run a Metal kernel under the emulator, which can read or write outside a
tensor and take the process down; the child's exit status and output say which case did.

Valid but unusual layouts are not errors: strided views of every input must give the contiguous result
(test_strided_inputs_read_as_their_values_on_the_emulator), which caught cu_seqlens views being read as their
storage.
"""
import itertools
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mfa_torch

ERR = RuntimeError
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

BAD_SCALARS = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300]
BAD_SOFTCAPS = [float("nan"), float("inf"), -1.0, -1e-3, 1e300, 1e-300, 1e-40]
BAD_DROPOUTS = [-0.1, 1.0, 1.5, float("nan"), float("inf"), -float("inf")]
BAD_WINDOWS = [(-2, 0), (0, -2), (-5, -5), (-(2 ** 63), 3), (3,), (1, 2, 3), (1.5, 2), (True, 0), "ab", None]


def _expect(thunk, pattern):
    """The call raises one of ERR whose message names the argument (regex `pattern`); it never returns."""
    with pytest.raises(ERR, match=pattern):
        result = thunk()
        pytest.fail(f"returned a result for an invalid request: {type(result).__name__}")


def _other_float(draw, dtype):
    return draw(st.sampled_from([d for d in FLOATS + [torch.float64] if d != dtype]))


def _bad_dtype(draw, dtype):
    """A dtype different from `dtype`: another float, an integer or bool."""
    return draw(st.sampled_from([d for d in FLOATS + [torch.float64, torch.int32, torch.int64, torch.bool]
                                 if d != dtype]))


def _non_tensor(draw):
    return draw(st.sampled_from([None, 1.0, [[1.0, 2.0]], "q", (1, 2)]))


# ------------------------------------------------------------------------------------------------------------------
# scaled_dot_product_attention and explain


@st.composite
def sdpa_calls(draw):
    """(thunk, pattern): a valid sdpa call (batch B, Hq = Hk * G heads, L, S, E, Ev) with one argument broken."""
    dtype = draw(st.sampled_from(FLOATS))
    B, Hk, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    L, S, E, Ev = (draw(st.integers(1, 6)) for _ in range(4))
    Hq = Hk * G
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    args = dict(query=t(B, Hq, L, E), key=t(B, Hk, S, E), value=t(B, Hk, S, Ev))
    kw = dict(enable_gqa=G > 1)
    which = draw(st.sampled_from([
        "rank", "dtype", "int_dtype", "device", "not_tensor", "head_dim", "value_len", "gqa_off", "heads_multiple",
        "kv_heads", "batch", "mask_shape", "mask_rank", "mask_dtype", "mask_device", "mask_not_tensor",
        "causal_and_mask", "is_causal_type", "enable_gqa_type", "scale", "scale_type", "dropout", "window",
        "softcap", "alibi_shape", "alibi_dtype", "alibi_device", "alibi_grad", "alibi_not_tensor",
        "return_lse_type"]))
    pattern = None
    if which == "rank":
        name = draw(st.sampled_from(["query", "key", "value"]))
        args[name] = draw(st.sampled_from([args[name].reshape(-1), args[name].reshape(-1)[0]]))
        pattern = name
    elif which == "dtype":
        name = draw(st.sampled_from(["key", "value"]))
        args[name] = args[name].to(_other_float(draw, dtype))
        pattern = rf"{name}.*dtype|dtype.*{name}"
    elif which == "int_dtype":
        bad = draw(st.sampled_from([torch.int32, torch.int64, torch.bool, torch.complex64]))
        args = {n: torch.ones(a.shape, dtype=bad) for n, a in args.items()}
        pattern = "query"
    elif which == "device":
        name = draw(st.sampled_from(["key", "value"]))
        args[name] = args[name].to("meta")
        pattern = rf"{name} is on meta"
    elif which == "not_tensor":
        name = draw(st.sampled_from(["query", "key", "value"]))
        args[name] = _non_tensor(draw)
        pattern = name
    elif which == "head_dim":
        args["key"] = t(B, Hk, S, E + draw(st.integers(1, 3)))
        pattern = "key head_dim"
    elif which == "value_len":
        args["value"] = t(B, Hk, S + draw(st.integers(1, 3)), Ev)
        pattern = "value seq_len"
    elif which == "gqa_off":
        args["query"] = t(B, Hk * 2, L, E)
        kw["enable_gqa"] = False
        pattern = "enable_gqa"
    elif which == "heads_multiple":
        args.update(query=t(B, 3, L, E), key=t(B, 2, S, E), value=t(B, 2, S, Ev))
        kw["enable_gqa"] = True
        pattern = "query heads"
    elif which == "kv_heads":  # value heads may differ from key heads (as in PyTorch), but must divide Hq
        args["value"] = t(B, Hq + 1, S, Ev)
        kw["enable_gqa"] = True
        pattern = "key and value"
    elif which == "batch":
        name = draw(st.sampled_from(["key", "value"]))
        args[name] = args[name].unsqueeze(0).expand(B + 1, *args[name].shape)
        args["query"] = args["query"].unsqueeze(0).expand(B + 2, *args["query"].shape)
        pattern = "batch dimensions"
    elif which == "mask_shape":
        full = [B, Hq, L, S]
        shape = [draw(st.sampled_from([1, n])) for n in full]
        dim = draw(st.integers(0, 3))
        shape[dim] = full[dim] + draw(st.integers(1, 3))  # neither 1 nor the full size
        kw["attn_mask"] = torch.zeros(shape).to(dtype) if draw(st.booleans()) else torch.ones(shape, dtype=torch.bool)
        pattern = "attn_mask"
    elif which == "mask_rank":
        kw["attn_mask"] = torch.zeros(draw(st.integers(2, 3)), 1, B, Hq, L, S, dtype=torch.bool)
        pattern = "attn_mask"
    elif which == "mask_dtype":
        bad = draw(st.sampled_from([d for d in (torch.int32, torch.uint8, torch.int64, torch.float16, torch.bfloat16,
                                                torch.float64) if d not in (dtype, torch.float32)]))
        kw["attn_mask"] = torch.zeros(L, S, dtype=bad)
        pattern = "attn_mask"
    elif which == "mask_device":
        kw["attn_mask"] = torch.zeros(L, S, dtype=torch.bool, device="meta")
        pattern = "attn_mask is on meta"
    elif which == "mask_not_tensor":
        kw["attn_mask"] = draw(st.sampled_from([[[True]], 1.0, "mask"]))
        pattern = "attn_mask"
    elif which == "causal_and_mask":
        kw.update(attn_mask=torch.ones(L, S, dtype=torch.bool), is_causal=True)
        pattern = "is_causal"
    elif which == "is_causal_type":
        kw["is_causal"] = draw(st.sampled_from([1, 0, "yes", None, 1.0]))
        pattern = "is_causal"
    elif which == "enable_gqa_type":
        kw["enable_gqa"] = draw(st.sampled_from([1, "true", None]))
        pattern = "enable_gqa"
    elif which == "scale":
        kw["scale"] = draw(st.sampled_from(BAD_SCALARS))
        pattern = "scale"
    elif which == "scale_type":
        kw["scale"] = draw(st.sampled_from([True, "0.5", torch.tensor(0.5), [0.5], 1j]))
        pattern = "scale"
    elif which == "dropout":
        # PyTorch's SDPA takes dropout_p = 1 (everything dropped); FlashAttention does not
        kw["dropout_p"] = draw(st.sampled_from([p for p in BAD_DROPOUTS if p != 1.0] + [True, "0.1"]))
        pattern = "dropout_p"
    elif which == "window":
        kw["window_size"] = draw(st.sampled_from([w for w in BAD_WINDOWS if w is not None]))
        pattern = "window_size"
    elif which == "softcap":
        kw["softcap"] = draw(st.sampled_from(BAD_SOFTCAPS + [None, "1"]))
        pattern = "softcap"
    elif which == "alibi_shape":
        kw["alibi_slopes"] = torch.rand(draw(st.sampled_from([(Hq + 1,), (B + 1, Hq), (1, 1, Hq), ()])))
        pattern = "alibi_slopes"
    elif which == "alibi_dtype":
        kw["alibi_slopes"] = torch.ones(Hq, dtype=draw(st.sampled_from([torch.int32, torch.int64, torch.bool])))
        pattern = "alibi_slopes"
    elif which == "alibi_device":
        kw["alibi_slopes"] = torch.rand(Hq, device="meta")
        pattern = "alibi_slopes is on meta"
    elif which == "alibi_grad":
        kw["alibi_slopes"] = torch.rand(Hq, requires_grad=True)
        pattern = "alibi_slopes"
    elif which == "alibi_not_tensor":
        kw["alibi_slopes"] = [0.5] * Hq
        pattern = "alibi_slopes"
    elif which == "return_lse_type":
        kw["return_lse"] = draw(st.sampled_from([1, "yes", None]))
        pattern = "return_lse"
    fn = draw(st.sampled_from([mfa_torch.scaled_dot_product_attention, mfa_torch.explain]))
    return (lambda: fn(**args, **kw)), pattern


@SETTINGS
@given(sdpa_calls(), st.sampled_from(["auto", "reference", "emulator"]))
def test_fuzz_sdpa_and_explain(call, backend):
    thunk, pattern = call
    with mfa_torch.backend(backend):
        _expect(thunk, pattern)


# ------------------------------------------------------------------------------------------------------------------
# flash_attn_func and flash_attn_varlen_func


def _flash_options(draw, which, H, B):
    """Options shared by the two FlashAttention functions: (kwargs, pattern) for option mutations, else None."""
    if which == "causal_type":
        return {"causal": draw(st.sampled_from([1, "yes", None]))}, "causal"
    if which == "window":
        return {"window_size": draw(st.sampled_from(BAD_WINDOWS))}, "window_size"
    if which == "scale":
        return {"softmax_scale": draw(st.sampled_from(BAD_SCALARS + [True, "1"]))}, "softmax_scale"
    if which == "softcap":
        return {"softcap": draw(st.sampled_from(BAD_SOFTCAPS))}, "softcap"
    if which == "dropout":
        return {"dropout_p": draw(st.sampled_from(BAD_DROPOUTS))}, "dropout_p"
    if which == "alibi":
        return {"alibi_slopes": torch.rand(draw(st.sampled_from([(H + 1,), (B + 1, H), (1, 1, H)])))}, "alibi_slopes"
    if which == "alibi_grad":
        return {"alibi_slopes": torch.rand(H, requires_grad=True)}, "alibi_slopes"
    if which == "probs_type":
        return {"return_attn_probs": draw(st.sampled_from([1, "yes", None]))}, "return_attn_probs"
    return None


OPTION_MUTATIONS = ["causal_type", "window", "scale", "softcap", "dropout", "alibi", "alibi_grad", "probs_type"]


@st.composite
def flash_calls(draw):
    dtype = draw(st.sampled_from(FLOATS))
    B, Hk, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Sq, Sk, D, Dv = (draw(st.integers(1, 6)) for _ in range(4))
    H = Hk * G
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    args = dict(q=t(B, Sq, H, D), k=t(B, Sk, Hk, D), v=t(B, Sk, Hk, Dv))
    which = draw(st.sampled_from(["rank", "dtype", "device", "batch", "head_dim", "kv_len", "heads"]
                                 + OPTION_MUTATIONS))
    kw, pattern = {}, None
    if which == "rank":
        name = draw(st.sampled_from("qkv"))
        args[name] = draw(st.sampled_from([args[name][0], args[name].unsqueeze(0)]))
        pattern = rf"\b{name} must be 4-D"
    elif which == "dtype":
        name = draw(st.sampled_from("kv"))
        args[name] = args[name].to(_bad_dtype(draw, dtype))
        pattern = rf"\b{name}\b"
    elif which == "device":
        name = draw(st.sampled_from("kv"))
        args[name] = args[name].to("meta")
        pattern = rf"\b{name} is on meta"
    elif which == "batch":
        name = draw(st.sampled_from("kv"))
        args[name] = torch.cat([args[name]] * 2)
        pattern = "batch sizes differ"
    elif which == "head_dim":
        args["k"] = t(B, Sk, Hk, D + 1)
        pattern = "k head_dim"
    elif which == "kv_len":
        args["v"] = t(B, Sk + 1, Hk, Dv)
        pattern = "v seqlen"
    elif which == "heads":
        args.update(q=t(B, Sq, 3, D), k=t(B, Sk, 2, D), v=t(B, Sk, 2, Dv))
        pattern = r"q heads"
    else:
        kw, pattern = _flash_options(draw, which, H, B)
    return (lambda: mfa_torch.flash_attn_func(**args, **kw)), pattern


@SETTINGS
@given(flash_calls(), st.sampled_from(["auto", "reference", "emulator"]))
def test_fuzz_flash_attn_func(call, backend):
    thunk, pattern = call
    with mfa_torch.backend(backend):
        _expect(thunk, pattern)


def _cu(lengths):
    return torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)


@st.composite
def varlen_calls(draw):
    dtype = draw(st.sampled_from(FLOATS))
    n = draw(st.integers(1, 3))
    lq = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    lk = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    Hk, G, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 6))
    H = Hk * G
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    total_q, total_k = sum(lq) + draw(st.integers(0, 2)), sum(lk)
    args = dict(q=t(total_q, H, D), k=t(total_k, Hk, D), v=t(total_k, Hk, D), cu_seqlens_q=_cu(lq),
                cu_seqlens_k=_cu(lk), max_seqlen_q=max(lq), max_seqlen_k=max(lk))
    which = draw(st.sampled_from([
        "rank", "dtype", "heads", "cu_dtype", "cu_rank", "cu_short", "cu_lengths", "cu_device", "cu_not_tensor",
        "cu_start", "cu_decreasing", "cu_beyond", "max_small", "max_negative", "max_type"] + OPTION_MUTATIONS))
    kw, pattern = {}, None
    side = draw(st.sampled_from(["q", "k"]))
    cu_name, max_name = f"cu_seqlens_{side}", f"max_seqlen_{side}"
    cu = args[cu_name]
    if which == "rank":
        name = draw(st.sampled_from("qkv"))
        args[name] = args[name].unsqueeze(0)
        pattern = rf"\b{name} must be 3-D"
    elif which == "dtype":
        name = draw(st.sampled_from("kv"))
        args[name] = args[name].to(_bad_dtype(draw, dtype))
        pattern = rf"\b{name}\b"
    elif which == "heads":
        args.update(q=t(total_q, 3, D), k=t(total_k, 2, D), v=t(total_k, 2, D))
        pattern = "q heads"
    elif which == "cu_dtype":
        args[cu_name] = cu.to(draw(st.sampled_from([torch.int64, torch.int16, torch.float32, torch.uint8])))
        pattern = cu_name
    elif which == "cu_rank":
        args[cu_name] = cu.unsqueeze(0)
        pattern = cu_name
    elif which == "cu_short":
        args["cu_seqlens_q"] = args["cu_seqlens_k"] = torch.zeros(draw(st.integers(0, 1)), dtype=torch.int32)
        pattern = "cu_seqlens_q"
    elif which == "cu_lengths":
        args[cu_name] = torch.cat([cu, cu[-1:]])
        pattern = "cu_seqlens_q and cu_seqlens_k"
    elif which == "cu_device":
        args[cu_name] = cu.to("meta")
        pattern = rf"{cu_name} is on meta"
    elif which == "cu_not_tensor":
        args[cu_name] = cu.tolist()
        pattern = cu_name
    elif which == "cu_start":
        args[cu_name] = cu + draw(st.integers(1, 3))
        pattern = f"{cu_name} must start at 0"
    elif which == "cu_decreasing":
        values = cu.tolist()
        if n >= 2:
            values[1] = values[2] + draw(st.integers(1, 3))
        else:
            values[1] = -draw(st.integers(1, 3))
        args[cu_name] = torch.tensor(values, dtype=torch.int32)
        pattern = f"{cu_name} must be non-decreasing"
    elif which == "cu_beyond":
        bumped = cu.clone()
        bumped[-1] = args["q" if side == "q" else "k"].shape[0] + draw(st.sampled_from([1, 5, 2 ** 30]))
        args[cu_name] = bumped
        pattern = cu_name
    elif which == "max_small":
        longest = max(lq if side == "q" else lk)
        args[max_name] = longest - 1  # -1 when every sequence is empty
        pattern = max_name if longest > 0 else "max_seqlen"
    elif which == "max_negative":
        args[max_name] = -draw(st.integers(1, 2 ** 40))
        pattern = "max_seqlen"
    elif which == "max_type":
        args[max_name] = draw(st.sampled_from([1.5, "3", None, True, torch.tensor(3.0)]))
        pattern = max_name
    else:
        kw, pattern = _flash_options(draw, which, H, n)
    return (lambda: mfa_torch.flash_attn_varlen_func(**args, **kw)), pattern


@SETTINGS
@given(varlen_calls(), st.sampled_from(["auto", "emulator"]))
def test_fuzz_flash_attn_varlen_func(call, backend):
    thunk, pattern = call
    with mfa_torch.backend(backend):
        _expect(thunk, pattern)


# ------------------------------------------------------------------------------------------------------------------
# flash_attn_with_kvcache: one thing broken, and nothing written to the cache

@st.composite
def kvcache_calls(draw):
    """(call, pattern, caches): a valid paged or contiguous call with new tokens and rotary, one thing made invalid."""
    dtype = draw(st.sampled_from(FLOATS))
    B, Hk, G, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), 2 * draw(st.integers(1, 4))
    paged = draw(st.booleans())
    page, pages_per_sequence = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    capacity = page * pages_per_sequence if paged else draw(st.integers(4, 12))
    new = draw(st.integers(1, min(3, capacity)))
    rows, length = (B * pages_per_sequence + 1, page) if paged else (B + 1, capacity)
    t = lambda *shape, dt=dtype: torch.randn(shape).to(dt)  # noqa: E731
    seqlens = [draw(st.integers(0, max(capacity - new, 0))) for _ in range(B)]
    args = dict(q=t(B, 1, Hk * G, D), k_cache=t(rows, length, Hk, D), v_cache=t(rows, length, Hk, D),
                k=t(B, new, Hk, D), v=t(B, new, Hk, D), rotary_cos=t(capacity + 1, D // 2),
                rotary_sin=t(capacity + 1, D // 2), cache_seqlens=torch.tensor(seqlens, dtype=torch.int32))
    if paged:
        args["block_table"] = torch.arange(B * pages_per_sequence, dtype=torch.int32).view(B, pages_per_sequence)
    which = draw(st.sampled_from(["q_rank", "cache_dtype", "cache_device", "new_heads", "new_dtype", "v_missing",
                                  "seqlens_past", "seqlens_negative", "seqlens_dtype", "seqlens_shape", "leftpad_past",
                                  "table_range", "table_dtype", "batch_index", "rotary_width", "rotary_short",
                                  "rotary_dtype", "rotary_alone", "splits", "lse_type", "window", "scale", "softcap",
                                  "alibi"]))
    b = draw(st.integers(0, B - 1))
    if which == "q_rank":
        args["q"], pattern = args["q"][0], r"\bq must be 4-D"
    elif which == "cache_dtype":
        name = draw(st.sampled_from(["k_cache", "v_cache"]))
        args[name], pattern = args[name].to(_other_float(draw, dtype)), name
    elif which == "cache_device":
        name = draw(st.sampled_from(["k_cache", "v_cache"]))
        args[name], pattern = args[name].to("meta"), rf"{name} is on meta"
    elif which == "new_heads":
        args["k"], pattern = t(B, new, Hk + 1, D), r"\bk must have shape"
    elif which == "new_dtype":
        name = draw(st.sampled_from("kv"))
        args[name], pattern = args[name].to(_other_float(draw, dtype)), rf"\b{name}\b"
    elif which == "v_missing":
        args["v"], pattern = None, "k and v"
    elif which == "seqlens_past":
        args["cache_seqlens"][b] = capacity - new + draw(st.integers(1, 5))
        pattern = rf"cache_seqlens\[{b}\]"
    elif which == "seqlens_negative":
        args["cache_seqlens"][b] = -draw(st.integers(1, 2 ** 30))
        pattern = rf"cache_seqlens\[{b}\]"
    elif which == "seqlens_dtype":
        args["cache_seqlens"], pattern = args["cache_seqlens"].long(), "cache_seqlens must be int32"
    elif which == "seqlens_shape":
        args["cache_seqlens"], pattern = torch.zeros(B + 1, dtype=torch.int32), "cache_seqlens must have shape"
    elif which == "leftpad_past":
        leftpad = torch.zeros(B, dtype=torch.int32)
        leftpad[b] = seqlens[b] + draw(st.integers(1, 3))
        args["cache_leftpad"], pattern = leftpad, rf"cache_leftpad\[{b}\]"
    elif which == "table_range":  # sequence b's first page (or cache row), which its new tokens are written to
        bad = draw(st.sampled_from([-1, rows, rows + 7, 2 ** 31 - 1]))
        if paged:
            args["block_table"][b, 0], args["cache_seqlens"][b] = bad, 0
            pattern = rf"block_table\[{b}, 0\]"
        else:
            args["cache_batch_idx"] = torch.arange(B, dtype=torch.int32)
            args["cache_batch_idx"][b] = bad
            pattern = rf"cache_batch_idx\[{b}\]"
    elif which == "table_dtype":
        name = "block_table" if paged else "cache_batch_idx"
        table = args["block_table"] if paged else torch.arange(B, dtype=torch.int32)
        args[name], pattern = table.long(), rf"{name} must be int32"
    elif which == "batch_index":
        args["cache_batch_idx"] = torch.arange(B, dtype=torch.int32)
        pattern = "cache_batch_idx" if paged else None
        if not paged:
            args["cache_batch_idx"] = torch.arange(B + 1, dtype=torch.int32)
            pattern = "cache_batch_idx must have shape"
    elif which == "rotary_width":
        args["rotary_cos"] = args["rotary_sin"] = t(capacity + 1, D // 2 + 1)
        pattern = "rotary_dim"
    elif which == "rotary_short":
        args["rotary_cos"], args["rotary_sin"] = args["rotary_cos"][:1], args["rotary_sin"][:1]
        args["cache_seqlens"][b] = max(args["cache_seqlens"][b], 1) if capacity - new >= 1 else 0
        pattern = "rotary_cos and rotary_sin have 1 positions"
        if capacity - new < 1 and new == 1:  # position 0 only: the table of one row is long enough
            args["rotary_cos"], args["rotary_sin"] = args["rotary_cos"][:0], args["rotary_sin"][:0]
            pattern = "rotary_cos and rotary_sin have 0 positions"
    elif which == "rotary_dtype":
        args["rotary_sin"], pattern = args["rotary_sin"].to(torch.int32), "rotary_sin"
    elif which == "rotary_alone":
        args["k"] = args["v"] = None
        pattern = "rotary_cos and rotary_sin need the new k and v"
    elif which == "splits":
        args["num_splits"], pattern = draw(st.sampled_from([-1, 1.5, True, "2"])), "num_splits"
    elif which == "lse_type":
        args["return_softmax_lse"], pattern = draw(st.sampled_from([1, "yes", None])), "return_softmax_lse"
    elif which == "window":
        args["window_size"], pattern = draw(st.sampled_from(BAD_WINDOWS)), "window_size"
    elif which == "scale":
        args["softmax_scale"], pattern = draw(st.sampled_from(BAD_SCALARS)), "softmax_scale"
    elif which == "softcap":
        args["softcap"], pattern = draw(st.sampled_from(BAD_SOFTCAPS)), "softcap"
    else:
        args["alibi_slopes"], pattern = torch.rand(Hk * G + 1), "alibi_slopes"
    return (lambda: mfa_torch.flash_attn_with_kvcache(**args)), pattern, (args["k_cache"], args["v_cache"])


@SETTINGS
@given(kvcache_calls(), st.sampled_from(["auto", "emulator"]))
def test_fuzz_flash_attn_with_kvcache_writes_nothing(call, backend):
    thunk, pattern, caches = call
    before = [c.clone() if c.device.type != "meta" else None for c in caches]
    with mfa_torch.backend(backend):
        _expect(thunk, pattern)
    for cache, saved in zip(caches, before):
        assert saved is None or torch.equal(cache, saved), "a refused call wrote into the cache"


# ------------------------------------------------------------------------------------------------------------------
# matmul and linear


@st.composite
def matmul_calls(draw):
    dtype = draw(st.sampled_from(FLOATS))
    M, K, N = (draw(st.integers(1, 5)) for _ in range(3))
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    a, b = t(M, K), t(K, N)
    which = draw(st.sampled_from(["rank0", "inner", "batch", "dtype", "int", "device", "not_tensor"]))
    if which == "rank0":
        name = draw(st.sampled_from(["input", "other"]))
        a, b = (a.reshape(-1)[0], b) if name == "input" else (a, b.reshape(-1)[0])
        pattern = name
    elif which == "inner":
        b = t(K + draw(st.integers(1, 3)), N)
        pattern = "input.*other|other.*input"
    elif which == "batch":
        a, b = t(2, M, K), t(3, K, N)
        pattern = "batch"
    elif which == "dtype":
        b = b.to(_other_float(draw, dtype))
        pattern = "other has dtype"
    elif which == "int":
        bad = draw(st.sampled_from([torch.int32, torch.int64, torch.bool]))
        a, b = a.to(bad), b.to(bad)
        pattern = "input"
    elif which == "device":
        b = b.to("meta")
        pattern = "other is on meta"
    else:
        name = draw(st.sampled_from(["input", "other"]))
        a, b = (_non_tensor(draw), b) if name == "input" else (a, _non_tensor(draw))
        pattern = name
    return (lambda: mfa_torch.matmul(a, b)), pattern


@st.composite
def linear_calls(draw):
    dtype = draw(st.sampled_from(FLOATS))
    M, K, N = (draw(st.integers(1, 5)) for _ in range(3))
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    x, w, bias = t(M, K), t(N, K), t(N) if draw(st.booleans()) else None
    which = draw(st.sampled_from(["features", "weight_rank", "bias_shape", "bias_dtype", "weight_dtype",
                                  "weight_device", "bias_device", "int", "input_rank0"]))
    if which == "features":
        w = t(N, K + draw(st.integers(1, 3)))
        pattern = "weight"
    elif which == "weight_rank":
        w = draw(st.sampled_from([w.unsqueeze(0), w.reshape(-1)[0]]))
        pattern = "weight"
    elif which == "bias_shape":
        bias = t(*draw(st.sampled_from([(N + 1,), (2, N), (N + 1, 1)])))
        pattern = "bias"
    elif which == "bias_dtype":
        bias = t(N).to(_bad_dtype(draw, dtype))
        pattern = "bias"
    elif which == "weight_dtype":
        w = w.to(_bad_dtype(draw, dtype))
        pattern = "weight"
    elif which == "weight_device":
        w = w.to("meta")
        pattern = "weight is on meta"
    elif which == "bias_device":
        bias = t(N).to("meta")
        pattern = "bias is on meta"
    elif which == "int":
        x, w = x.to(torch.int64), w.to(torch.int64)
        pattern = "input"
    else:
        x = x.reshape(-1)[0]
        pattern = "input"
    return (lambda: mfa_torch.linear(x, w, bias)), pattern


@SETTINGS
@given(st.one_of(matmul_calls(), linear_calls()), st.sampled_from(["auto", "reference", "emulator"]))
def test_fuzz_matmul_and_linear(call, backend):
    thunk, pattern = call
    with mfa_torch.backend(backend):
        _expect(thunk, pattern)


# ------------------------------------------------------------------------------------------------------------------
# the raw ops: torch.ops.mfa.attention_forward / attention_backward / gemm with their canonical arguments

FORWARD_ARGS = ("q", "k", "v", "mask", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
                "scale", "window_left", "window_right", "bottom_right", "softcap", "dropout_p", "dropout_seed")


def _forward(a):
    return torch.ops.mfa.attention_forward(*(a[n] for n in FORWARD_ARGS))


def _backward(a):
    return torch.ops.mfa.attention_backward(a["grad_out"], *(a[n] for n in ("q", "k", "v", "out", "stats")),
                                            *(a[n] for n in FORWARD_ARGS[3:]), a["mask_grad"])


@st.composite
def raw_attention_calls(draw):
    """(op name, arguments dict, pattern): a valid canonical call with exactly one thing made invalid."""
    dtype = draw(st.sampled_from(FLOATS))
    varlen = draw(st.booleans())
    Hk, G, E, Ev = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    Hq = Hk * G
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    if varlen:
        lq, lk = [2, 0, 3], [3, 1, 2]
        B, L, S = 1, sum(lq), sum(lk)
        cu_q, cu_k, max_q, max_k = _cu(lq), _cu(lk), max(lq), max(lk)
    else:
        B, L, S = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
        cu_q = cu_k = None
        max_q, max_k = L, S
    a = dict(q=t(B, Hq, L, E), k=t(B, Hk, S, E), v=t(B, Hk, S, Ev), mask=None, alibi_slopes=None,
             cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, scale=0.5,
             window_left=-1, window_right=-1, bottom_right=varlen, softcap=0.0, dropout_p=0.0, dropout_seed=None)
    op = draw(st.sampled_from(["forward", "backward"]))
    a.update(grad_out=t(B, Hq, L, Ev), out=t(B, Hq, L, Ev), stats=torch.randn(B, Hq, L, 2), mask_grad=False)
    mutations = ["rank", "int_dtype", "dtype", "device", "batch", "head_dim", "v_shape", "heads", "alibi_shape",
                 "alibi_dtype", "alibi_device", "one_cu", "window", "scale", "softcap", "dropout", "seed"]
    mutations += ["cu_dtype", "cu_lengths", "cu_start", "cu_beyond", "max_small", "max_negative", "varlen_batch",
                  "mask_with_cu"] if varlen else ["mask_rank", "mask_dtype", "mask_device", "mask_size"]
    if op == "backward":
        mutations += ["out_shape", "out_dtype", "grad_shape", "grad_dtype", "grad_device", "stats_shape", "stats_dtype",
                      "mask_grad"]
    which = draw(st.sampled_from(mutations))
    side = draw(st.sampled_from(["q", "k"]))
    pattern = None
    if which == "rank":
        name = draw(st.sampled_from("qkv"))
        a[name] = draw(st.sampled_from([a[name][0], a[name].unsqueeze(0)]))
        pattern = rf"\b{name} must be 4-D"
    elif which == "int_dtype":
        name = draw(st.sampled_from("qkv"))
        a[name] = a[name].to(draw(st.sampled_from([torch.int32, torch.int64, torch.bool])))
        pattern = rf"\b{name} must be float16"
    elif which == "dtype":
        name = draw(st.sampled_from("kv"))
        a[name] = a[name].to(_other_float(draw, dtype))
        pattern = rf"\b{name} has dtype"
    elif which == "device":
        name = draw(st.sampled_from("kv"))
        a[name] = a[name].to("meta")
        pattern = rf"\b{name} is on meta"
    elif which == "batch":
        name = draw(st.sampled_from("kv"))
        a[name] = torch.cat([a[name]] * 2)
        pattern = "batch sizes differ"
    elif which == "head_dim":
        a["k"] = t(B, Hk, S, E + 1)
        pattern = "k head_dim"
    elif which == "v_shape":
        a["v"] = draw(st.sampled_from([t(B, Hk + 1, S, Ev), t(B, Hk, S + 1, Ev)]))
        pattern = r"\bv shape"
    elif which == "heads":
        a.update(q=t(B, 3, L, E), k=t(B, 2, S, E), v=t(B, 2, S, Ev))
        pattern = "q heads"
    elif which == "alibi_shape":
        a["alibi_slopes"] = torch.rand(draw(st.sampled_from([(1, Hq + 1), (B + 3, Hq), (Hq,), (1, 1, Hq)])))
        pattern = "alibi_slopes"
    elif which == "alibi_dtype":
        a["alibi_slopes"] = torch.rand(1, Hq).to(draw(st.sampled_from([torch.float16, torch.float64, torch.int32])))
        pattern = "alibi_slopes"
    elif which == "alibi_device":
        a["alibi_slopes"] = torch.rand(1, Hq, device="meta")
        pattern = "alibi_slopes is on meta"
    elif which == "one_cu":
        a["cu_seqlens_" + side] = None if varlen else _cu([L])
        pattern = "cu_seqlens_q and cu_seqlens_k"
    elif which == "window":
        a["window_" + draw(st.sampled_from(["left", "right"]))] = -draw(st.sampled_from([2, 3, 2 ** 40, 2 ** 63]))
        pattern = "window_(left|right)"
    elif which == "scale":
        a["scale"] = draw(st.sampled_from(BAD_SCALARS))
        pattern = "scale"
    elif which == "softcap":
        a["softcap"] = draw(st.sampled_from(BAD_SOFTCAPS))
        pattern = "softcap"
    elif which == "dropout":
        a["dropout_p"] = draw(st.sampled_from(BAD_DROPOUTS))
        pattern = "dropout_p"
    elif which == "seed":
        a["dropout_p"] = 0.5
        a["dropout_seed"] = draw(st.sampled_from([None, torch.tensor([1, 2], dtype=torch.int32),
                                                  torch.tensor([1, 2, 3]), torch.tensor([[1, 2]]),
                                                  torch.tensor([1, 2], device="meta")]))
        pattern = "dropout_seed"
    elif which == "cu_dtype":
        a["cu_seqlens_" + side] = a["cu_seqlens_" + side].to(draw(st.sampled_from([torch.int64, torch.float32])))
        pattern = f"cu_seqlens_{side}"
    elif which == "cu_lengths":
        cu = a["cu_seqlens_" + side]
        a["cu_seqlens_" + side] = torch.cat([cu, cu[-1:]])
        pattern = "cu_seqlens_q and cu_seqlens_k"
    elif which == "cu_start":
        a["cu_seqlens_" + side] = a["cu_seqlens_" + side] + 1
        pattern = f"cu_seqlens_{side} must start at 0"
    elif which == "cu_beyond":
        cu = a["cu_seqlens_" + side].clone()
        cu[-1] = (L if side == "q" else S) + draw(st.sampled_from([1, 7, 2 ** 30]))
        a["cu_seqlens_" + side] = cu
        pattern = f"cu_seqlens_{side}"
    elif which == "max_small":
        a["max_seqlen_" + side] -= draw(st.integers(1, 2))
        pattern = f"max_seqlen_{side}"
    elif which == "max_negative":
        a["max_seqlen_" + side] = -draw(st.sampled_from([1, 2 ** 40]))
        pattern = "max_seqlen"
    elif which == "varlen_batch":
        for n in ("q", "k", "v", "grad_out", "out", "stats"):
            a[n] = torch.cat([a[n]] * 2)
        pattern = r"\bq must have batch size 1"
    elif which == "mask_with_cu":
        a["mask"] = torch.ones(1, 1, L, S, dtype=torch.bool)
        pattern = "mask"
    elif which == "mask_rank":
        a["mask"] = torch.ones(draw(st.sampled_from([(L, S), (1, L, S), (1, 1, 1, L, S)])), dtype=torch.bool)
        pattern = "mask must be 4-D"
    elif which == "mask_dtype":
        a["mask"] = torch.ones(1, 1, L, S, dtype=draw(st.sampled_from([torch.int32, torch.uint8, torch.int64])))
        pattern = "mask must be bool or floating"
    elif which == "mask_device":
        a["mask"] = torch.ones(1, 1, L, S, dtype=torch.bool, device="meta")
        pattern = "mask is on meta"
    elif which == "mask_size":
        full = [B, Hq, L, S]
        shape = [draw(st.sampled_from([1, n])) for n in full]
        dim = draw(st.integers(0, 3))
        shape[dim] = full[dim] + draw(st.integers(1, 2))
        a["mask"] = torch.zeros(shape)
        pattern = f"mask dim {dim}"
    elif which == "out_shape":
        a["out"] = t(B, Hq, L + 1, Ev)
        pattern = r"\bout must have shape"
    elif which == "out_dtype":
        a["out"] = a["out"].to(_other_float(draw, dtype))
        pattern = r"\bout must have dtype"
    elif which == "grad_shape":
        a["grad_out"] = draw(st.sampled_from([t(B, Hq, L, Ev + 1), t(B, Hq, L + 1, Ev)]))
        pattern = "grad_out must have shape"
    elif which == "grad_dtype":
        a["grad_out"] = a["grad_out"].to(_other_float(draw, dtype))
        pattern = "grad_out must have dtype"
    elif which == "grad_device":
        a["grad_out"] = a["grad_out"].to("meta")
        pattern = "grad_out is on meta"
    elif which == "stats_shape":
        a["stats"] = draw(st.sampled_from([torch.randn(B, Hq, L), torch.randn(B, Hq, L + 1, 2), torch.randn(1)]))
        pattern = "stats must have shape"
    elif which == "stats_dtype":
        a["stats"] = a["stats"].to(draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
        pattern = "stats must have dtype"
    elif which == "mask_grad":
        a["mask_grad"] = True
        if not varlen and draw(st.booleans()):
            a["mask"] = torch.ones(B, Hq, L, S, dtype=torch.bool)
        pattern = "mask_grad"
    return op, a, pattern


@SETTINGS
@given(raw_attention_calls())
def test_fuzz_raw_attention_ops_on_the_reference_route(call):
    op, a, pattern = call
    with mfa_torch.backend("reference"):
        _expect(lambda: (_forward if op == "forward" else _backward)(a), pattern)


@st.composite
def raw_gemm_calls(draw):
    dtype = draw(st.sampled_from(FLOATS))
    Ba, M, K, N = draw(st.integers(1, 2)), *(draw(st.integers(1, 5)) for _ in range(3))
    Bb = draw(st.sampled_from([1, Ba]))
    t = lambda *s, dt=dtype: torch.randn(s).to(dt)  # noqa: E731
    a, b, bias = t(Ba, M, K), t(Bb, K, N), t(N) if draw(st.booleans()) else None
    which = draw(st.sampled_from(["a_rank", "b_rank", "int", "b_dtype", "b_device", "inner", "batch", "bias_shape",
                                  "bias_dtype", "bias_device"]))
    if which == "a_rank":
        a = draw(st.sampled_from([a[0], a.unsqueeze(0)]))
        pattern = r"\ba must be 3-D"
    elif which == "b_rank":
        b = draw(st.sampled_from([b[0], b.unsqueeze(0)]))
        pattern = r"\bb must be 3-D"
    elif which == "int":
        a = a.to(draw(st.sampled_from([torch.int32, torch.int64, torch.bool])))
        pattern = r"\ba must be float16"
    elif which == "b_dtype":
        b = b.to(_bad_dtype(draw, dtype))
        pattern = r"\bb\b"
    elif which == "b_device":
        b = b.to("meta")
        pattern = r"\bb \(.*meta"
    elif which == "inner":
        b = t(Bb, K + 1, N)
        pattern = "inner dimensions"
    elif which == "batch":
        a, b = t(2, M, K), t(3, K, N)
        pattern = "batch sizes"
    elif which == "bias_shape":
        bias = t(*draw(st.sampled_from([(N + 1,), (1, N), ()])))
        pattern = "bias"
    elif which == "bias_dtype":
        bias = t(N).to(_bad_dtype(draw, dtype))
        pattern = "bias"
    else:
        bias = t(N).to("meta")
        pattern = "bias"
    return a, b, bias, pattern


@SETTINGS
@given(raw_gemm_calls(), st.sampled_from(["reference", "emulator"]))
def test_fuzz_raw_gemm(call, backend):
    a, b, bias, pattern = call
    with mfa_torch.backend(backend):
        _expect(lambda: torch.ops.mfa.gemm(a, b, bias), pattern)


# ------------------------------------------------------------------------------------------------------------------
# the raw attention ops on backend "emulator", in a child process (a request that slipped through would run a kernel)

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import mfa_torch, torch
    from hypothesis import given
    import test_fuzz_bad_input as fuzz

    @fuzz.SETTINGS
    @given(fuzz.raw_attention_calls())
    def run(call):
        op, a, pattern = call
        with mfa_torch.backend("emulator"):
            fuzz._expect(lambda: (fuzz._forward if op == "forward" else fuzz._backward)(a), pattern)

    run()
    print("FUZZ-OK")
""")


@pytest.mark.emulator
def test_fuzz_raw_attention_ops_on_the_emulator_in_a_child_process():
    code = _CHILD.format(tests=str(pathlib.Path(__file__).parent))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ))
    assert result.returncode == 0 and "FUZZ-OK" in result.stdout, \
        f"exit status {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


# ------------------------------------------------------------------------------------------------------------------
# what only the emulator's planner can refuse, and valid strided layouts


def _varlen_args(max_q=4, max_k=5):
    q, k, v = torch.randn(7, 2, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    return q, k, v, torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0, 4, 9], dtype=torch.int32), max_q, \
        max_k


@pytest.mark.parametrize("max_q, max_k, name", [(2 ** 31, 5, "max_seqlen_q"), (4, 2 ** 40, "max_seqlen_k")])
def test_the_emulator_planner_refuses_sizes_beyond_32_bit_positions(max_q, max_k, name):
    """The Python checks accept a max_seqlen larger than every sequence; the Metal planner keeps positions in 32
    bits and raises ValueError naming the argument (the reference route, which has no such limit, runs it)."""
    args = _varlen_args(max_q, max_k)
    with mfa_torch.backend("emulator"):
        _expect(lambda: mfa_torch.flash_attn_varlen_func(*args), name)
    with mfa_torch.backend("reference"):
        assert mfa_torch.flash_attn_varlen_func(*args).shape == (7, 2, 8)


def test_the_emulator_planner_refuses_an_unknown_gpu_family(monkeypatch):
    monkeypatch.setenv("MFA_TORCH_GPU_FAMILY", "apple3")
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    with mfa_torch.backend("emulator"):
        _expect(lambda: torch.ops.mfa.attention_forward(q, k, v, None, None, None, None, 5, 7, 0.3, -1, -1, False,
                                                        0.0, 0.0, None), "gpu family")


def test_raw_backward_checks_cu_seqlens_values_like_the_forward():
    """Regression: attention_backward did not check the cu_seqlens values (only the forward did), so a raw backward
    with offsets past the packed tokens reached the kernels, which read and wrote outside q/dq."""
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen_args()
    canonical = [t.transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v)]
    out, stats = torch.ops.mfa.attention_forward(*canonical, None, None, cu_q, cu_k, max_q, max_k, 0.3, -1, -1,
                                                 True, 0.0, 0.0, None)
    bad = torch.tensor([0, 3, 700], dtype=torch.int32)
    for backend in ("reference", "emulator"):
        with mfa_torch.backend(backend):
            _expect(lambda: torch.ops.mfa.attention_backward(torch.ones_like(out), *canonical, out, stats, None, None,
                                                             bad, cu_k, 700, max_k, 0.3, -1, -1, True, 0.0, 0.0, None,
                                                             False), "cu_seqlens_q")


@pytest.mark.emulator
@pytest.mark.parametrize("strided", ["q", "k", "v", "mask", "alibi", "cu_seqlens", "grad_out"])
def test_strided_inputs_read_as_their_values_on_the_emulator(strided):
    """Strided views are valid input: the emulator route must read their values, not their storage. Regression: a
    cu_seqlens view such as cu[::2] was bound as its storage, so the kernel read other offsets than the checks saw
    (heap corruption and an abort of the process). Each run is compared with the same call on contiguous copies."""
    torch.manual_seed(0)
    view = lambda t: torch.stack([t, torch.full_like(t, 99)], -1)[..., 0]  # noqa: E731  (same values, strided)
    if strided == "cu_seqlens":
        q, k, v, cu_q, cu_k, max_q, max_k = _varlen_args()
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        with mfa_torch.backend("emulator"):
            ours = mfa_torch.flash_attn_varlen_func(q, k, v, view(cu_q), view(cu_k), max_q, max_k, causal=True)
            ours_grads = torch.autograd.grad(ours.sum(), (q, k, v))
            want = mfa_torch.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=True)
            want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    else:
        base = dict(q=torch.randn(2, 4, 9, 16), k=torch.randn(2, 2, 11, 16), v=torch.randn(2, 2, 11, 16),
                    mask=torch.randn(2, 1, 9, 11), alibi=torch.rand(4))
        grad = torch.randn(2, 4, 9, 16)
        inputs = {n: (view(t) if n == strided else t) for n, t in base.items()}
        grad_in = view(grad) if strided == "grad_out" else grad

        def run(x, g):
            leaves = [x[n].detach().requires_grad_() for n in "qkv"]
            out = mfa_torch.scaled_dot_product_attention(*leaves, attn_mask=x["mask"], enable_gqa=True,
                                                         alibi_slopes=x["alibi"])
            return out, torch.autograd.grad(out, leaves, g)

        with mfa_torch.backend("emulator"):
            ours, ours_grads = run(inputs, grad_in)
            want, want_grads = run({n: t.contiguous() for n, t in inputs.items()}, grad)
    assert torch.equal(ours, want)
    for a, b in zip(ours_grads, want_grads):
        assert torch.equal(a, b)
