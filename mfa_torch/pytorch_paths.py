"""PyTorch's own attention paths for calls its SDPA cannot take as they are (sliding windows, bottom-right causal
with L != S, ALiBi, softcap): route "sdpa-mask", PyTorch's SDPA given a mask mfa_torch builds, and route "flex",
PyTorch's flex_attention compiled with a block mask (blocks outside the causal/window band are skipped) and a
score_mod. Off Apple GPUs they are faster than mfa_torch's chunked reference kernels where PyTorch supports them
(`python -m mfa_torch.bench`, README "Routes").

Both run an attention_call.AttentionCall and return (out, lse or None); autograd and dropout are PyTorch's.
`choice(call)` is the rule routing.choose applies: which of them takes a call, or why neither does.
"""
import collections
import math
import os
import threading

import torch

from ._validation import require

ROUTES = ("flex", "sdpa-mask")
MASK_BUDGET_ENV = "MFA_TORCH_MASK_BUDGET_MIB"
DEFAULT_MASK_BUDGET_MIB = 256
# Below this many scores per (batch, head), PyTorch's SDPA with a mask beats compiled flex_attention on a CPU (its
# per-call and block-mask overheads dominate: measured at L = S = 64 ... 1024, README "Routes"), and a first call
# would spend seconds compiling for nothing.
FLEX_MIN_SCORES = 1 << 20
_FLEX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# PyTorch 2.13's compiled CPU flex_attention returned wrong rows, varying from process to process, for sequences of
# 40 queries and keys, and right ones from 100 up (tests/test_pytorch_paths.py runs it at 128 and more).
FLEX_CPU_MIN_LENGTH = 128
_BLOCK_MASKS_KEPT = 8
_MASK_ROWS_PER_STEP = 256

# PyTorch's own SDPA, bound at import so that mfa_torch.patch() can reroute torch.nn.functional safely.
torch_sdpa = torch._C._nn.scaled_dot_product_attention

_lock = threading.Lock()
_compiled_flex = None
_block_masks = collections.OrderedDict()  # (L, S, band, device) -> BlockMask, least recently used first


def mask_budget():
    """Bytes the sdpa-mask route may spend on a mask: $MFA_TORCH_MASK_BUDGET_MIB (MiB), default 256."""
    text = os.environ.get(MASK_BUDGET_ENV, str(DEFAULT_MASK_BUDGET_MIB))
    try:
        mib = float(text)
    except ValueError:
        mib = float("nan")
    require(mib >= 0 and math.isfinite(mib),
            f"environment variable {MASK_BUDGET_ENV} must be a number of MiB >= 0, got {text!r}")
    return int(mib * 2**20)


def _offset(call):
    """Key index of query 0's diagonal: the causal/window band and ALiBi distances are measured from it."""
    return call.k.shape[2] - call.q.shape[2] if call.bottom_right else 0


def _band(call):
    """(left, right, offset) of the causal/window band, or None when it allows every key."""
    L, S = call.q.shape[2], call.k.shape[2]
    offset = _offset(call)
    left_free = call.left < 0 or call.left >= L - 1 + offset
    right_free = call.right < 0 or call.right >= S - 1 - offset
    return None if left_free and right_free else (call.left, call.right, offset)


def _mask_layout(call):
    """(shape, dtype) of the mask route sdpa-mask builds, or None when the call needs none."""
    B, Hq, L, _ = call.q.shape
    S = call.k.shape[2]
    shapes = [(1, 1, L, S)] if _band(call) else []
    if call.alibi is not None:
        shapes.append((call.alibi.shape[0], Hq, L, S))
    if call.mask is not None:
        shapes.append(tuple(call.mask.shape))
    if not shapes:
        return None
    return tuple(torch.broadcast_shapes(*shapes)), _mask_dtype(call)


def _mask_dtype(call):
    """An additive float mask (0 or -inf where not allowed): PyTorch's SDPA would convert a bool mask to one in
    q's dtype anyway (a second L x S tensor). ALiBi distances need float32's precision (float64 for float64)."""
    if call.alibi is not None:
        return torch.float64 if call.q.dtype == torch.float64 else torch.float32
    if call.mask is not None and call.mask.dtype != torch.bool:
        return torch.promote_types(call.mask.dtype, call.q.dtype)
    return call.q.dtype


def _mask_bytes(layout):
    shape, dtype = layout
    return math.prod(shape) * (torch.finfo(dtype).bits // 8)


def obstacles(call):
    """{route: why it cannot take the call, or None}."""
    L, S, E, Ev = call.q.shape[2], call.k.shape[2], call.q.shape[3], call.v.shape[3]
    empty = "empty sizes" if 0 in (call.q.shape[0], call.q.shape[1], call.k.shape[1], L, S, E, Ev) else None
    common = empty or ("varlen (cu_seqlens)" if call.cu_q is not None else None) or \
        ("attention sinks (neither flex_attention nor SDPA has an extra logit per row)" if call.sinks is not None
         else None)
    device = call.q.device.type
    flex = common or next((why for why, applies in (
        ("an attn_mask (flex_attention takes masks as functions)", call.mask is not None),
        ("dropout (flex_attention has none)", call.dropout_p > 0),
        (f"{call.q.dtype} (flex_attention takes float32, float16 and bfloat16)", call.q.dtype not in _FLEX_DTYPES),
        (f"gradients (flex_attention has no backward on {device})", device != "cuda" and call.needs_grad),
        (f"return_lse (compiled flex_attention returns none on {device})", device != "cuda" and call.lse_wanted),
        (f"the {device} device", device not in ("cpu", "cuda", "mps")),
        (f"sequences shorter than {FLEX_CPU_MIN_LENGTH} on {device} (PyTorch's compiled kernel gave wrong results "
         "for them)", device != "cuda" and min(L, S) < FLEX_CPU_MIN_LENGTH),
        ("tracing by torch.compile (the block masks are cached outside the graph)", torch.compiler.is_compiling()),
    ) if applies), None)
    layout = _mask_layout(call)
    mask_bytes, budget = 0 if layout is None else _mask_bytes(layout), mask_budget()
    sdpa = common or next((why for why, applies in (
        ("softcap (not expressible as a mask)", call.softcap > 0),
        ("return_lse (PyTorch's SDPA returns none)", call.lse_wanted),
        (f"a mask of {mask_bytes / 2**20:.1f} MiB, over the {budget / 2**20:g} MiB budget (${MASK_BUDGET_ENV})",
         mask_bytes > budget),
    ) if applies), None)
    return {"flex": flex, "sdpa-mask": sdpa}


def _describe(route, call):
    if route == "flex":
        return ("PyTorch's flex_attention compiled by torch.compile, with a block mask of the causal/window band "
                "(blocks outside it skipped) and a score_mod for ALiBi/softcap; each new configuration compiles "
                "once (seconds)")
    layout = _mask_layout(call)
    if layout is None:
        return "PyTorch's SDPA (no mask needed)"
    shape, dtype = layout
    return (f"PyTorch's SDPA with a {tuple(shape)} {str(dtype).removeprefix('torch.')} mask mfa_torch builds "
            f"({_mask_bytes(layout) / 2**20:.1f} MiB, within the {mask_budget() / 2**20:g} MiB budget)")


def choice(call, forced=None):
    """(route, description) of the PyTorch path that takes the call, or (None, why neither does).

    forced: a backend naming one of ROUTES, which must take the call (else an error says why not). Otherwise flex
    is preferred for problems of at least FLEX_MIN_SCORES scores, then sdpa-mask, then flex at any size.
    """
    blocked = obstacles(call)
    if forced is not None:
        require(blocked[forced] is None, f'backend "{forced}" cannot take this call: {blocked[forced]}')
        return forced, _describe(forced, call)
    large = call.q.shape[2] * call.k.shape[2] >= FLEX_MIN_SCORES
    order = ("flex", "sdpa-mask") if large else ("sdpa-mask",)
    route = next((r for r in order if blocked[r] is None), None)
    if route is not None:
        return route, _describe(route, call)
    small = "" if large else f"; flex: fewer than {FLEX_MIN_SCORES} scores per head (sdpa-mask or ours is faster)"
    return None, f"flex: {blocked['flex'] or 'n/a'}{small}; sdpa-mask: {blocked['sdpa-mask']}"


def run(route, call):
    return _flex(call) if route == "flex" else _sdpa_with_mask(call)


# --- sdpa-mask -------------------------------------------------------------------------------------------------

def _build_mask(call):
    """The mask of _mask_layout, or None: an additive float mask (ALiBi, a float attn_mask, zeros), -inf where the
    band or a bool attn_mask forbids. Filled a few rows at a time, so that its construction takes little memory
    beyond the mask itself (a whole-matrix build would add L x S index and bool temporaries)."""
    layout = _mask_layout(call)
    if layout is None:
        return None
    shape, dtype = layout
    device = call.q.device
    mask = torch.zeros(shape, dtype=dtype, device=device)
    band, offset, user = _band(call), _offset(call), call.mask
    slopes = None if call.alibi is None else call.alibi.to(dtype).view(call.alibi.shape[0], -1, 1, 1)
    cols = torch.arange(shape[3], device=device).view(1, -1)
    for r0 in range(0, shape[2], _MASK_ROWS_PER_STEP):
        r1 = min(r0 + _MASK_ROWS_PER_STEP, shape[2])
        part = mask[:, :, r0:r1]
        if slopes is not None:
            rows = torch.arange(r0, r1, device=device).view(-1, 1) + offset
            part -= slopes * (rows - cols).abs().to(dtype)
        if user is not None:
            rows_of_user = user[:, :, r0:r1] if user.shape[2] > 1 else user
            if user.dtype == torch.bool:
                part.masked_fill_(~rows_of_user, float("-inf"))
            else:
                part += rows_of_user
        if band is not None:  # keys r0 + offset - left ..= r0 + offset + right of the rows' first, one more per row
            left, right, _ = band
            inside = torch.ones(r1 - r0, shape[3], dtype=torch.bool, device=device)
            if right >= 0:
                inside.tril_(r0 + offset + right)
            if left >= 0:
                inside.triu_(r0 + offset - left)
            part.masked_fill_(inside.logical_not_(), float("-inf"))
    return mask


def _sdpa_with_mask(call):
    out = torch_sdpa(call.q, call.k, call.v, _build_mask(call), call.dropout_p, False, scale=call.scale,
                     enable_gqa=call.q.shape[1] != call.k.shape[1])
    return out, None


# --- flex ------------------------------------------------------------------------------------------------------

def _flex_function():
    global _compiled_flex
    with _lock:
        if _compiled_flex is None:
            from torch.nn.attention.flex_attention import flex_attention
            _compiled_flex = torch.compile(flex_attention)
        return _compiled_flex


def _block_mask(call):
    """The band's block mask, shared by every batch and head; the last few are kept (creating one evaluates the band
    over every score)."""
    band = _band(call)
    if band is None:
        return None
    L, S, device = call.q.shape[2], call.k.shape[2], call.q.device
    key = (L, S, band, str(device))
    with _lock:
        if key in _block_masks:
            _block_masks.move_to_end(key)
            return _block_masks[key]
    from torch.nn.attention.flex_attention import create_block_mask
    left, right, offset = band
    unbounded = L + S  # a bound no distance reaches
    # Tensors, not ints, so that every band shares one compiled kernel (ints would be specialised on).
    low, high, shift = (torch.tensor(x, device=device) for x in (
        left if left >= 0 else unbounded, right if right >= 0 else unbounded, offset))

    def allowed(b, h, q_idx, kv_idx):
        distance = kv_idx - q_idx - shift
        return (distance >= -low) & (distance <= high)

    block_mask = create_block_mask(allowed, None, None, L, S, device=device)
    with _lock:
        _block_masks[key] = block_mask
        while len(_block_masks) > _BLOCK_MASKS_KEPT:
            _block_masks.popitem(last=False)
    return block_mask


def _score_mod(call):
    """softcap, then ALiBi, on the scaled scores (the order of the ops and the oracle); None without either."""
    B, Hq = call.q.shape[:2]
    shift = torch.tensor(_offset(call), device=call.q.device)
    cap = torch.tensor(call.softcap, dtype=torch.float32, device=call.q.device)
    slopes = None if call.alibi is None else call.alibi.float().expand(B, Hq)

    def softcapped(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    def biased(score, b, h, q_idx, kv_idx):
        return score - slopes[b, h] * (q_idx + shift - kv_idx).abs()

    def both(score, b, h, q_idx, kv_idx):
        return biased(softcapped(score, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)

    return {(False, False): None, (True, False): softcapped, (False, True): biased,
            (True, True): both}[(call.softcap > 0, slopes is not None)]


def _flex(call):
    # Without autograd (off CUDA, the only way flex is taken) the inputs are detached: flex_attention refuses inputs
    # that require grad on a CPU even under torch.no_grad().
    q, k, v = (t if call.needs_grad else t.detach() for t in (call.q, call.k, call.v))
    result = _flex_function()(q, k, v, score_mod=_score_mod(call), block_mask=_block_mask(call),
                              scale=call.scale, enable_gqa=call.q.shape[1] != call.k.shape[1],
                              return_lse=call.lse_wanted)
    return result if call.lse_wanted else (result, None)
