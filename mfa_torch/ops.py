"""torch.library glue for the mfa ops declared in csrc/ops.cpp: argument checks, fake kernels, the
per-device kernels of the reference route, and autograd.

The ops take the one canonical form documented in csrc/ops.cpp; mfa_torch/attention.py and gemm.py turn
user-facing arguments into it.
"""
import torch

from . import _C  # noqa: F401  (loads the op schemas)
from . import reference, routing
from .block_masks import CompactBlockMask
from .paged_kv import PagedKV
from .metal import attention as metal_attention
from .metal import gemm as metal_gemm
from ._validation import FLOAT32_MAX as _FLOAT32_MAX
from ._validation import FLOAT32_TINY as _FLOAT32_TINY
from ._validation import FLOAT_DTYPES as _FLOATS
from ._validation import require as _check


def _check_attention_args(q, k, v, mask, alibi, cu_q, cu_k, max_q, max_k, scale, left, right, softcap,
                          dropout_p, seed, paged=False):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check(t.dim() == 4, f"{name} must be 4-D (batch, heads, seqlen, head_dim), got shape {tuple(t.shape)}")
        _check(t.dtype in _FLOATS, f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        _check(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
        _check(t.dtype == q.dtype, f"{name} has dtype {t.dtype} but q has {q.dtype}")
    B, Hq, L, E = q.shape
    _check(k.shape[0] == v.shape[0] and (paged or k.shape[0] == B),
           f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    Hk, S = k.shape[1], k.shape[2]
    _check(k.shape[3] == E, f"k head_dim {k.shape[3]} != q head_dim {E}")
    _check(v.shape[1] == Hk and v.shape[2] == S, f"v shape {tuple(v.shape)} does not match k shape {tuple(k.shape)}")
    _check(Hk > 0 and Hq % Hk == 0 or Hq == Hk == 0, f"q heads ({Hq}) must be a multiple of k heads ({Hk})")
    if mask is not None:
        _check(mask.dim() == 4, f"mask must be 4-D, got shape {tuple(mask.shape)}")
        _check(mask.dtype == torch.bool or mask.dtype in _FLOATS, f"mask must be bool or floating, got {mask.dtype}")
        _check(mask.device == q.device, f"mask is on {mask.device} but q is on {q.device}")
        for dim, (m, full) in enumerate(zip(mask.shape, (B, Hq, L, S))):
            _check(m in (1, full), f"mask dim {dim} has size {m}, expected 1 or {full} (shape {(B, Hq, L, S)})")
        _check(cu_q is None, "mask is not supported together with cu_seqlens")
    if alibi is not None:
        _check(alibi.dim() == 2 and alibi.shape[0] in (1, B if cu_q is None else cu_q.shape[0] - 1)
               and alibi.shape[1] == Hq, f"alibi_slopes must have shape (1 or batch, {Hq}), got {tuple(alibi.shape)}")
        _check(alibi.dtype == torch.float32, f"alibi_slopes must be float32, got {alibi.dtype}")
        _check(alibi.device == q.device, f"alibi_slopes is on {alibi.device} but q is on {q.device}")
    if paged:
        _check(cu_k is None, "cu_seqlens_k cannot be given with a paged K/V cache: kv_spans give each sequence's keys")
    else:
        _check((cu_q is None) == (cu_k is None), "cu_seqlens_q and cu_seqlens_k must be given together")
    if cu_q is not None:
        _check(B == 1, f"q must have batch size 1 with cu_seqlens (packed sequences), got {B}")
        for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
            if cu is None:
                continue
            _check(cu.dim() == 1 and cu.dtype == torch.int32 and cu.shape[0] >= 2,
                   f"{name} must be a 1-D int32 tensor of length batch + 1 >= 2")
            _check(cu.device == q.device, f"{name} is on {cu.device} but q is on {q.device}")
        _check(cu_k is None or cu_q.shape == cu_k.shape, "cu_seqlens_q and cu_seqlens_k must have the same length")
        _check(max_q >= 0 and max_k >= 0, "max_seqlen_q and max_seqlen_k must be >= 0")
    for name, w in (("window_left", left), ("window_right", right)):
        _check(w >= -1, f"{name} must be >= -1 (-1 = unbounded), got {w}")
    _check(scale == scale and abs(scale) <= _FLOAT32_MAX, f"scale must be finite within float32's range, got {scale}")
    _check(softcap == 0 or _FLOAT32_TINY <= softcap <= _FLOAT32_MAX,
           f"softcap must be 0 (off) or within float32's normal range [1.2e-38, 3.4e38], got {softcap}")
    _check(0 <= dropout_p < 1, f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0:
        _check(seed is not None and seed.dtype == torch.int64 and seed.shape == (2,) and seed.device.type == "cpu",
               "dropout_seed must be an int64 CPU tensor (seed, offset) when dropout_p > 0")


def _check_sinks(sinks, q):
    if sinks is not None:
        _check(tuple(sinks.shape) == (q.shape[1],), f"sinks must have shape ({q.shape[1]},), one logit per query "
                                                    f"head, got {tuple(sinks.shape)}")
        _check(sinks.dtype == reference.stats_dtype(q.dtype),
               f"sinks must have dtype {reference.stats_dtype(q.dtype)} (the stats' dtype), got {sinks.dtype}")
        _check(sinks.device == q.device, f"sinks is on {sinks.device} but q is on {q.device}")


def _check_block_mask(blocks, bits, block_size, q, k, mask, cu_q):
    """The compact block mask's shapes (mfa_torch/block_masks.py): all three arguments or none."""
    given = (blocks is not None, bits is not None, len(block_size) > 0)
    _check(all(given) or not any(given), "mask_blocks, mask_bits and mask_block_size must be given together")
    if blocks is None:
        return
    _check(mask is None and cu_q is None, "mask_blocks cannot be combined with mask or cu_seqlens")
    _check(len(block_size) == 2 and min(block_size) >= 1,
           f"mask_block_size must be two block sizes >= 1, got {list(block_size)}")
    B, Hq, L = q.shape[:3]
    bq, bk = block_size
    for name, t, dim in (("mask_blocks", blocks, 4), ("mask_bits", bits, 3)):
        _check(t.dim() == dim and t.dtype == torch.int32, f"{name} must be a {dim}-D int32 tensor")
        _check(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
    expected = (-(-L // bq), -(-k.shape[2] // bk))
    _check(blocks.shape[0] in (1, B) and blocks.shape[1] in (1, Hq) and tuple(blocks.shape[2:]) == expected,
           f"mask_blocks must have shape (1 or {B}, 1 or {Hq}, {expected[0]}, {expected[1]}), "
           f"got {tuple(blocks.shape)}")
    _check(tuple(bits.shape[1:]) == (bq, -(-bk // 32)),
           f"mask_bits must have shape (partial blocks, {bq}, {-(-bk // 32)}), got {tuple(bits.shape)}")


def _check_paged(block_table, kv_spans, q, k, mask, blocks, cu_q, dropout_p, num_splits):
    """A paged K/V cache's shapes (csrc/ops.cpp): block_table and kv_spans together, one row per sequence."""
    _check(num_splits >= 0, f"num_splits must be >= 0 (0: the planner's choice), got {num_splits}")
    _check((block_table is None) == (kv_spans is None), "block_table and kv_spans must be given together")
    if block_table is None:
        return
    _check(mask is None and blocks is None and dropout_p == 0,
           "a paged K/V cache (block_table) takes no mask, block mask or dropout")
    sequences = q.shape[0] if cu_q is None else cu_q.shape[0] - 1
    for name, t, shape in (("block_table", block_table, f"({sequences}, max_pages)"),
                           ("kv_spans", kv_spans, f"({sequences}, 2)")):
        _check(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}")
        _check(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
        _check(t.dim() == 2 and t.shape[0] == sequences and (name == "block_table" or t.shape[1] == 2),
               f"{name} must have shape {shape}, got {tuple(t.shape)}")


def _check_paged_values(block_table, kv_spans, pages, page_size, max_k):
    """The spans and the pages they reach, which only a running kernel can read (not fake tensors)."""
    if block_table is None or kv_spans.numel() == 0:
        return
    first, count = kv_spans.long().unbind(1)
    _check(bool((first >= 0).all() and (count >= 0).all()), "kv_spans must hold (first position, key count) >= 0")
    end = first + count
    capacity = block_table.shape[1] * page_size
    _check(int(end.max()) <= capacity, f"kv_spans (each sequence's keys, from cu_seqlens_k or cache_seqlens) reach "
                                       f"cache position {int(end.max())}, beyond the "
                                       f"{capacity} positions of a block_table row ({block_table.shape[1]} pages of "
                                       f"{page_size})")
    _check(int(count.max()) <= max_k, f"max_seqlen_k ({max_k}) is smaller than the longest span ({int(count.max())})")
    index = torch.arange(block_table.shape[1], device=block_table.device).view(1, -1) * page_size
    touched = (index + page_size > first.view(-1, 1)) & (index < end.view(-1, 1)) & (count.view(-1, 1) > 0)
    bad = touched & ((block_table < 0) | (block_table >= pages))
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        _check(False, f"block_table[{b}, {j}] = {int(block_table[b, j])} is not a page of the cache (0..{pages - 1})")


def _check_block_mask_values(blocks, bits):
    """The states' values, which only a running kernel can read (not fake tensors)."""
    if blocks is not None and blocks.numel():
        low, high = int(blocks.min()), int(blocks.max())
        _check(low >= -2 and high < bits.shape[0], f"mask_blocks values must be -1 (empty), -2 (full) or an index "
                                                  f"into mask_bits' {bits.shape[0]} blocks, got {low}..{high}")


def _check_cu_seqlens_values(cu_q, cu_k, total_q, total_k, max_q, max_k):
    """Checks of the varlen offsets' values, which only a running kernel can read (not fake tensors)."""
    for name, cu, total, max_len, max_name in (("cu_seqlens_q", cu_q, total_q, max_q, "max_seqlen_q"),
                                               ("cu_seqlens_k", cu_k, total_k, max_k, "max_seqlen_k")):
        if cu is None:
            continue
        values = cu.tolist()
        _check(values[0] == 0, f"{name} must start at 0, got {values[0]}")
        lengths = [b - a for a, b in zip(values, values[1:])]
        _check(all(n >= 0 for n in lengths), f"{name} must be non-decreasing, got {values}")
        _check(values[-1] <= total, f"{name} ends at {values[-1]}, beyond the {total} packed tokens")
        longest = max(lengths)
        _check(longest <= max_len, f"{max_name} ({max_len}) is smaller than the longest sequence ({longest})")


@torch.library.register_fake("mfa::attention_forward")
def _attention_forward_fake(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            scale, window_left, window_right, bottom_right, softcap, dropout_p, dropout_seed,
                            sinks=None, mask_blocks=None, mask_bits=None, mask_block_size=(), block_table=None,
                            kv_spans=None, num_splits=0):
    _check_attention_args(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          scale, window_left, window_right, softcap, dropout_p, dropout_seed, block_table is not None)
    _check_sinks(sinks, q)
    _check_block_mask(mask_blocks, mask_bits, mask_block_size, q, k, mask, cu_seqlens_q)
    _check_paged(block_table, kv_spans, q, k, mask, mask_blocks, cu_seqlens_q, dropout_p, num_splits)
    B, Hq, L, _ = q.shape
    return q.new_empty(B, Hq, L, v.shape[-1]), q.new_empty(B, Hq, L, 2, dtype=reference.stats_dtype(q.dtype))


def _check_backward_args(grad_out, q, v, out, stats, mask, mask_grad):
    """The forward's outputs and the output gradient must be what attention_forward returned for q, k, v: the
    kernels read them as dense (B, Hq, L, Ev) rows of q's dtype and (B, Hq, L, 2) softmax stats."""
    B, Hq, L, _ = q.shape
    for name, t, shape, dtype in (("out", out, (B, Hq, L, v.shape[3]), q.dtype),
                                  ("grad_out", grad_out, (B, Hq, L, v.shape[3]), q.dtype),
                                  ("stats", stats, (B, Hq, L, 2), reference.stats_dtype(q.dtype))):
        _check(tuple(t.shape) == shape, f"{name} must have shape {shape}, got {tuple(t.shape)}")
        _check(t.dtype == dtype, f"{name} must have dtype {dtype}, got {t.dtype}")
        _check(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
    _check(not mask_grad or (mask is not None and mask.dtype != torch.bool), "mask_grad needs a floating mask")


@torch.library.register_fake("mfa::attention_backward")
def _attention_backward_fake(grad_out, q, k, v, out, stats, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                             max_seqlen_q, max_seqlen_k, scale, window_left, window_right, bottom_right, softcap,
                             dropout_p, dropout_seed, mask_grad, mask_blocks=None, mask_bits=None,
                             mask_block_size=()):
    _check_attention_args(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          scale, window_left, window_right, softcap, dropout_p, dropout_seed)
    _check_backward_args(grad_out, q, v, out, stats, mask, mask_grad)
    _check_block_mask(mask_blocks, mask_bits, mask_block_size, q, k, mask, cu_seqlens_q)
    # Contiguous whatever the inputs' strides, as every kernel returns them.
    dmask = mask.new_empty(mask.shape) if mask_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask


def _check_gemm_args(a, b, bias):
    for name, t in (("a", a), ("b", b)):
        _check(t.dim() == 3, f"{name} must be 3-D (batch, rows, cols), got shape {tuple(t.shape)}")
        _check(t.dtype in _FLOATS, f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    _check(b.dtype == a.dtype and b.device == a.device, f"b ({b.dtype}, {b.device}) must match a ({a.dtype}, {a.device})")
    _check(a.shape[2] == b.shape[1], f"inner dimensions differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    _check(a.shape[0] == b.shape[0] or 1 in (a.shape[0], b.shape[0]),
           f"batch sizes must match or be 1: a {a.shape[0]}, b {b.shape[0]}")
    if bias is not None:
        _check(bias.shape == (b.shape[2],), f"bias must have shape ({b.shape[2]},), got {tuple(bias.shape)}")
        _check(bias.dtype == a.dtype and bias.device == a.device, "bias must match a's dtype and device")


@torch.library.register_fake("mfa::gemm")
def _gemm_fake(a, b, bias):
    _check_gemm_args(a, b, bias)
    return a.new_empty(a.shape[0] if b.shape[0] == 1 else b.shape[0], a.shape[1], b.shape[2])


# --- kernels: every device type; the Metal route (MPS stream or emulator) where routing picks it, else reference

# One kernel per op for every device type (registered below, also for the MPS dispatch key by name): it asks
# routing.kernel_route for the Metal route (the MPS executor on MPS tensors, the emulator on CPU tensors with backend
# "emulator") and otherwise runs the reference route.
def _blocks(mask_blocks, mask_bits, mask_block_size):
    """The compact block mask of the ops' arguments, or None."""
    return None if mask_blocks is None else CompactBlockMask(mask_blocks, mask_bits, tuple(mask_block_size))


def _attention_forward_kernel(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, scale, window_left, window_right, bottom_right, softcap, dropout_p,
                              dropout_seed, sinks=None, mask_blocks=None, mask_bits=None, mask_block_size=(),
                              block_table=None, kv_spans=None, num_splits=0):
    _check_attention_args(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          scale, window_left, window_right, softcap, dropout_p, dropout_seed, block_table is not None)
    _check_sinks(sinks, q)
    _check_block_mask(mask_blocks, mask_bits, mask_block_size, q, k, mask, cu_seqlens_q)
    _check_paged(block_table, kv_spans, q, k, mask, mask_blocks, cu_seqlens_q, dropout_p, num_splits)
    _check_block_mask_values(mask_blocks, mask_bits)
    _check_paged_values(block_table, kv_spans, k.shape[0], k.shape[2], max_seqlen_k)
    _check_cu_seqlens_values(cu_seqlens_q, cu_seqlens_k, q.shape[2], k.shape[2], max_seqlen_q, max_seqlen_k)
    blocks = _blocks(mask_blocks, mask_bits, mask_block_size)
    pages = None if block_table is None else PagedKV(block_table, kv_spans)
    route = routing.kernel_route(q.device, metal_attention.metal_lacks(q.dtype, q.shape[3], v.shape[3]))
    if route is not None:
        return metal_attention.forward(route, q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                       max_seqlen_k, scale, window_left, window_right, bottom_right, softcap,
                                       dropout_p, dropout_seed, sinks, blocks=blocks, pages=pages,
                                       num_splits=num_splits)
    return reference.attention_forward(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                       max_seqlen_k, scale, window_left, window_right, bottom_right, softcap,
                                       dropout_p, dropout_seed, sinks, blocks=blocks, pages=pages)


def _attention_backward_kernel(grad_out, q, k, v, out, stats, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                               max_seqlen_q, max_seqlen_k, scale, window_left, window_right, bottom_right,
                               softcap, dropout_p, dropout_seed, mask_grad, mask_blocks=None, mask_bits=None,
                               mask_block_size=()):
    _check_attention_args(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          scale, window_left, window_right, softcap, dropout_p, dropout_seed)
    _check_backward_args(grad_out, q, v, out, stats, mask, mask_grad)
    _check_block_mask(mask_blocks, mask_bits, mask_block_size, q, k, mask, cu_seqlens_q)
    _check_block_mask_values(mask_blocks, mask_bits)
    _check_cu_seqlens_values(cu_seqlens_q, cu_seqlens_k, q.shape[2], k.shape[2], max_seqlen_q, max_seqlen_k)
    blocks = _blocks(mask_blocks, mask_bits, mask_block_size)
    route = routing.kernel_route(q.device, metal_attention.backward_lacks(q, v, mask, mask_grad))
    if route is not None:
        return metal_attention.backward(route, grad_out, q, k, v, out, stats, mask, alibi_slopes, cu_seqlens_q,
                                        cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, window_left, window_right,
                                        bottom_right, softcap, dropout_p, dropout_seed, mask_grad, blocks=blocks)
    return reference.attention_backward(grad_out.contiguous(), q, k, v, out, stats, mask, alibi_slopes,
                                        cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, window_left,
                                        window_right, bottom_right, softcap, dropout_p, dropout_seed, mask_grad,
                                        blocks=blocks)


def _gemm_kernel(a, b, bias):
    _check_gemm_args(a, b, bias)
    route = routing.kernel_route(a.device, metal_gemm.metal_lacks(a.dtype))
    if route is not None:
        return metal_gemm.gemm(route, a, b, bias)
    return reference.gemm(a, b, bias)


for _op, _kernel in (("mfa::attention_forward", _attention_forward_kernel),
                    ("mfa::attention_backward", _attention_backward_kernel), ("mfa::gemm", _gemm_kernel)):
    for _device_type in (None, "mps"):  # None: CompositeExplicitAutograd, every device type
        torch.library.register_kernel(_op, _device_type, _kernel)


# --- autograd -----------------------------------------------------------------------------------------------

_ATTENTION_OPTIONS = ("mask", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
                      "scale", "window_left", "window_right", "bottom_right", "softcap", "dropout_p",
                      "dropout_seed", "sinks", "mask_blocks", "mask_bits", "mask_block_size", "block_table",
                      "kv_spans", "num_splits")


def _attention_setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    options = dict(zip(_ATTENTION_OPTIONS, inputs[3:]))
    out, stats = output
    mask = options["mask"]
    ctx.mask_grad = mask is not None and mask.requires_grad
    ctx.options = {name: value for name, value in options.items() if not isinstance(value, torch.Tensor)}
    ctx.save_for_backward(q, k, v, out, stats, mask, options["alibi_slopes"], options["cu_seqlens_q"],
                          options["cu_seqlens_k"], options["dropout_seed"], options.get("sinks"),
                          options.get("mask_blocks"), options.get("mask_bits"))
    ctx.options.setdefault("mask_block_size", [])
    ctx.paged = options.get("block_table") is not None
    ctx.mark_non_differentiable(stats)  # like FlashAttention's log-sum-exp: an auxiliary output
    ctx.backend = routing.get_backend()


def _sinks_gradient(sinks, grad_out, out, stats):
    """d loss / d sinks[h] = -sum over the rows of head h of p_sink * rowsum(dO * O): the sink's value is 0, so its
    score gradient is p_sink (0 - D) with D = rowsum(dO * O) (FlashAttention's D). Rows attending nothing give 0."""
    row_max, row_sum = stats.unbind(-1)
    attended = row_sum > 0
    shift = torch.where(attended, row_max, torch.zeros_like(row_max))
    p_sink = torch.where(attended, torch.exp(sinks.view(1, -1, 1) - shift) / torch.where(attended, row_sum, 1), 0)
    delta = (grad_out.to(stats.dtype) * out.to(stats.dtype)).sum(-1)
    return -(p_sink * delta).sum((0, 2))


def _attention_backward(ctx, grad_out, _grad_stats):
    if ctx.paged:
        raise RuntimeError("mfa::attention_forward: a paged K/V cache (block_table) has no backward: KV-cache attention "
                           "is for inference (run it under torch.no_grad() or torch.inference_mode())")
    q, k, v, out, stats, mask, alibi, cu_q, cu_k, seed, sinks, blocks, bits = ctx.saved_tensors
    o = ctx.options
    with routing.pinned_backend(ctx.backend):
        dq, dk, dv, dmask = torch.ops.mfa.attention_backward(
            grad_out.contiguous(), q, k, v, out, stats, mask, alibi, cu_q, cu_k, o["max_seqlen_q"], o["max_seqlen_k"],
            o["scale"], o["window_left"], o["window_right"], o["bottom_right"], o["softcap"], o["dropout_p"], seed,
            ctx.mask_grad, blocks, bits, o["mask_block_size"])
    grads = [dq, dk, dv] + [None] * len(_ATTENTION_OPTIONS)
    if ctx.mask_grad:
        grads[3 + _ATTENTION_OPTIONS.index("mask")] = dmask
    sinks_at = 3 + _ATTENTION_OPTIONS.index("sinks")
    if sinks is not None and ctx.needs_input_grad[sinks_at]:
        grads[sinks_at] = _sinks_gradient(sinks, grad_out, out, stats)
    return tuple(grads)


torch.library.register_autograd("mfa::attention_forward", _attention_backward,
                                setup_context=_attention_setup_context)


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError("mfa::attention_backward: double backward (gradients of attention gradients) is not "
                       "supported")


torch.library.register_autograd("mfa::attention_backward", _refuse_double_backward,
                                setup_context=lambda ctx, inputs, output: None)


def _gemm_setup_context(ctx, inputs, output):
    a, b, bias = inputs
    ctx.has_bias = bias is not None
    ctx.backend = routing.get_backend()
    ctx.save_for_backward(a, b)


def _sum_to_batch(grad, batch):
    """Gradients of an operand broadcast over the batch are summed back to its batch size of 1."""
    return grad.sum(0, keepdim=True) if batch == 1 and grad.shape[0] != 1 else grad


def _gemm_backward(ctx, grad):
    a, b = ctx.saved_tensors
    grad_a = grad_b = grad_bias = None
    with routing.pinned_backend(ctx.backend):
        if ctx.needs_input_grad[0]:  # dA = dC x B^T, the transpose read through strides
            grad_a = _sum_to_batch(torch.ops.mfa.gemm(grad, b.transpose(1, 2), None), a.shape[0])
        if ctx.needs_input_grad[1]:  # dB = A^T x dC
            grad_b = _sum_to_batch(torch.ops.mfa.gemm(a.transpose(1, 2), grad, None), b.shape[0])
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad.sum((0, 1))
    return grad_a, grad_b, grad_bias


torch.library.register_autograd("mfa::gemm", _gemm_backward, setup_context=_gemm_setup_context)
