"""User-facing attention functions: validate, normalise to the ops' canonical form, pick the route.

Two conventions meet here:
  scaled_dot_product_attention: torch's (N..., H, L, E) layout, causal aligned to the upper left;
  flash_attn_func / flash_attn_varlen_func: FlashAttention's (B, S, H, D) layout, causal aligned to the
  bottom right (query i sees keys up to i + S - L).
The ops take one canonical form (csrc/ops.cpp) with the alignment explicit; q, k and v reach them as views of the
caller's tensors (transposes, packed qkv), never copies.
"""
import math
import numbers

import torch
from torch.nn.attention.bias import CausalBias, CausalVariant

from . import pytorch_paths, reference, routing
from ._validation import (ArgumentTypeError, check_dropout, check_float_tensors, check_scale, check_softcap,
                          check_window, overrides_torch_functions, require)
from .attention_call import AttentionCall
from .metal import attention as metal_attention
from .paged_kv import PagedKV

_torch_sdpa = pytorch_paths.torch_sdpa


def _check_heads(Hq, Hk, Hv, enable_gqa, names, kv_heads_may_differ=False):
    """Grouped-query heads: Hk and Hv each divide Hq (PyTorch's SDPA lets them differ, FlashAttention does not)."""
    q_name, k_name, v_name = names
    require(kv_heads_may_differ or Hk == Hv,
            f"{k_name} and {v_name} must have the same number of heads, got {Hk} and {Hv}")
    for name, heads in ((k_name, Hk), (v_name, Hv)):
        if heads != Hq:
            require(enable_gqa, f"{q_name} has {Hq} heads but {name} has {heads}: pass enable_gqa=True for "
                                "grouped-query attention")
            require(heads > 0 and Hq % heads == 0, f"Number of heads in key and value must divide the number of "
                                                   f"heads in query: {q_name} heads ({Hq}) must be a multiple of "
                                                   f"{name} heads ({heads})")


def _check_alibi(alibi_slopes, q, shapes, description):
    """ALiBi slopes of one of `shapes`; returned as (1 or batch, heads) fp32."""
    require(isinstance(alibi_slopes, torch.Tensor), "alibi_slopes must be a torch.Tensor", ArgumentTypeError)
    require(alibi_slopes.is_floating_point(), f"alibi_slopes must be floating, got {alibi_slopes.dtype}",
            ArgumentTypeError)
    require(alibi_slopes.device == q.device, f"alibi_slopes is on {alibi_slopes.device} but the query is on {q.device}")
    require(not alibi_slopes.requires_grad, "alibi_slopes must not require grad: gradients of ALiBi slopes are "
                                            "not supported")
    require(tuple(alibi_slopes.shape) in shapes,
            f"alibi_slopes must have shape {description}, got {tuple(alibi_slopes.shape)}")
    heads = alibi_slopes.shape[-1]
    return alibi_slopes.float().reshape(-1, heads).contiguous()


def _check_sinks(sinks, q, heads, name):
    """Attention sinks, one logit per query head: (heads,) floating, returned in the softmax stats' dtype (autograd
    flows through the conversion, so a sinks tensor that requires grad gets its gradient)."""
    require(isinstance(sinks, torch.Tensor), f"{name} must be a torch.Tensor", ArgumentTypeError)
    require(sinks.is_floating_point(), f"{name} must be floating, got {sinks.dtype}", ArgumentTypeError)
    require(sinks.device == q.device, f"{name} is on {sinks.device} but the query is on {q.device}")
    require(tuple(sinks.shape) == (heads,),
            f"{name} must have shape ({heads},), one logit per query head, got {tuple(sinks.shape)}")
    return sinks.to(reference.stats_dtype(q.dtype))


# ---------------------------------------------------------------------------------------------------------
# scaled_dot_product_attention

class _SdpaRequest:
    """A validated sdpa call: what PyTorch's SDPA lacks for it, and how to run it through the ops."""

    def __init__(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window_size,
                 alibi_slopes, softcap, sinks, return_lse):
        check_float_tensors(query=query, key=key, value=value)
        require(min(t.dim() for t in (query, key, value)) >= 2,
                f"Expected query, key, and value to all be at least 2 dimensional (..., seq_len, head_dim), but got "
                f"query.dim: {query.dim()}, key.dim: {key.dim()}, value.dim: {value.dim()}")
        require(key.shape[-1] == query.shape[-1],
                f"key head_dim {key.shape[-1]} must equal query head_dim {query.shape[-1]}")
        require(value.shape[-2] == key.shape[-2],
                f"value seq_len {value.shape[-2]} must equal key seq_len {key.shape[-2]}")
        head = lambda t: t.shape[-3] if t.dim() >= 3 else 1  # noqa: E731
        require(isinstance(enable_gqa, bool), "enable_gqa must be a bool", ArgumentTypeError)
        _check_heads(head(query), head(key), head(value), enable_gqa, ("query", "key", "value"),
                     kv_heads_may_differ=True)
        batch_of = lambda t: tuple(t.shape[:-3])  # noqa: E731
        try:
            self.batch = tuple(torch.broadcast_shapes(batch_of(query), batch_of(key), batch_of(value)))
        except RuntimeError:
            require(False, f"batch dimensions of query {batch_of(query)}, key {batch_of(key)} and value "
                           f"{batch_of(value)} are not broadcastable")
        self.B = math.prod(self.batch)
        self.q, self.k, self.v = query, key, value
        self.Hq = head(query)
        # Key and value heads may differ (each dividing Hq): the ops take one count, the least common multiple.
        self.Hk = math.lcm(head(key), head(value)) if head(key) and head(value) else head(key)
        self.L, self.S, self.E = query.shape[-2], key.shape[-2], query.shape[-1]
        self.dropout_p = check_dropout(dropout_p, one_allowed=True)
        require(isinstance(is_causal, bool), "is_causal must be a bool", ArgumentTypeError)
        self.bottom_right = False
        if isinstance(attn_mask, CausalBias):
            attn_mask, is_causal = self._causal_bias(attn_mask, is_causal)
        require(not (is_causal and attn_mask is not None),
                "Explicit attn_mask should not be set when is_causal=True (fold the causal structure into attn_mask)")
        self.is_causal, self.enable_gqa = is_causal, enable_gqa
        self.scale = (1.0 / math.sqrt(self.E) if self.E > 0 else 1.0) if scale is None else \
            check_scale("scale", scale)
        self.user_scale = scale
        self.mask = None if attn_mask is None else self._check_mask(attn_mask)
        left, right = (-1, -1) if window_size is None else check_window(window_size)
        self.window = (left, 0 if is_causal else right)
        self.softcap = check_softcap("softcap", softcap)
        self.alibi = None
        if alibi_slopes is not None:
            self.alibi = _check_alibi(alibi_slopes, query, {(self.Hq,), self.batch + (self.Hq,)},
                                      f"({self.Hq},) or {self.batch + (self.Hq,)}")
        self.sinks = None if sinks is None else _check_sinks(sinks, query, self.Hq, "sinks")
        require(isinstance(return_lse, bool), "return_lse must be a bool", ArgumentTypeError)
        self.return_lse = return_lse
        self._call = None
        self.torch_lacks = [name for name, wanted in (
            ("window_size", (left, right) != (-1, -1)),
            ("lower-right causal alignment (causal_lower_right) with L != S", self.bottom_right),
            ("alibi_slopes", alibi_slopes is not None),
            ("softcap", self.softcap > 0),
            ("sinks", sinks is not None),
            ("return_lse", return_lse)) if wanted]
        self.metal_lacks = metal_attention.metal_lacks(query.dtype, query.shape[-1], value.shape[-1])

    def _causal_bias(self, bias, is_causal):
        """torch.nn.attention.bias's causal_upper_left / causal_lower_right, read as PyTorch reads them: upper-left
        causal, or lower-right causal when its L != S. Returns (attn_mask, is_causal) with the bias folded in."""
        require(not is_causal, "CausalBias should not be used with causal=True")
        if bias.variant == CausalVariant.LOWER_RIGHT and bias.seq_len_q != bias.seq_len_kv:
            require((bias.seq_len_q, bias.seq_len_kv) == (self.L, self.S),
                    f"attn_mask is causal_lower_right({bias.seq_len_q}, {bias.seq_len_kv}) but query and key have "
                    f"L = {self.L} and S = {self.S}")
            self.bottom_right = True
        return None, True

    def _check_mask(self, mask):
        require(isinstance(mask, torch.Tensor), f"attn_mask must be a torch.Tensor, got {type(mask).__name__}",
                ArgumentTypeError)
        require(mask.dtype in (torch.bool, torch.float32, self.q.dtype),
                f"Expected attn_mask dtype to be bool or float or to match query dtype, but got attn_mask.dtype: "
                f"{mask.dtype} and query.dtype: {self.q.dtype}", ArgumentTypeError)
        require(mask.device == self.q.device, f"attn_mask is on {mask.device} but query is on {self.q.device}")
        full = self.batch + (self.Hq, self.L, self.S)
        broadcastable = mask.dim() <= len(full) and all(
            m in (1, f) for m, f in zip(reversed(mask.shape), reversed(full)))
        require(broadcastable, f"attn_mask of shape {tuple(mask.shape)} is not broadcastable to {full} "
                               "(batch..., heads, L, S)")
        return mask

    def torch_sdpa(self):
        # torch's SDPA rejects masks of fewer than 2 dims although they broadcast: give them 2.
        mask = self.mask if self.mask is None or self.mask.dim() >= 2 else \
            self.mask.reshape((1,) * (2 - self.mask.dim()) + tuple(self.mask.shape))
        return _torch_sdpa(self.q, self.k, self.v, mask, self.dropout_p, self.is_causal,
                           scale=self.user_scale, enable_gqa=self.enable_gqa)

    def _canonical_qkv(self, t, heads):
        """(N..., H, L, D) -> (B, heads, L, D), a view where the batch dims merge (broadcast ones are expanded
        here; heads fewer than `heads` are repeated: key and value heads that differ)."""
        t = t.reshape((1,) * (len(self.batch) + 3 - t.dim()) + tuple(t.shape))
        if t.shape[-3] != heads:
            t = t.repeat_interleave(heads // t.shape[-3], dim=-3)
        return t.expand(*self.batch, heads, *t.shape[-2:]).reshape(self.B, heads, *t.shape[-2:])

    def _canonical_mask(self):
        """The mask as 4-D (1 or B, 1 or Hq, 1 or L, 1 or S): broadcast dims stay size 1, never expanded.
        Only a mask broadcast over some but not all of several batch dims is expanded over those dims."""
        nb = len(self.batch)
        m = self.mask.reshape((1,) * (nb + 3 - self.mask.dim()) + tuple(self.mask.shape))
        if all(d == 1 for d in m.shape[:nb]):
            return m.reshape(1, *m.shape[nb:])
        return m.expand(*self.batch, *m.shape[nb:]).reshape(self.B, *m.shape[nb:])

    def call(self):
        """The call in the ops' canonical form, built once and only for routes other than torch-sdpa (a plain
        attribute, not functools.cached_property, whose lock torch.compile cannot trace)."""
        if self._call is not None:
            return self._call
        # dropout_p = 1 drops everything: PyTorch's dropout multiplies by 0 (zeros, and NaN where the
        # probabilities are NaN); the ops' keep mask takes p < 1, so run() forms the product.
        self._call = AttentionCall(self._canonical_qkv(self.q, self.Hq), self._canonical_qkv(self.k, self.Hk),
                             self._canonical_qkv(self.v, self.Hk),
                             mask=None if self.mask is None else self._canonical_mask(), alibi=self.alibi,
                             scale=self.scale, window=self.window, bottom_right=self.bottom_right,
                             softcap=self.softcap, dropout_p=0.0 if self.dropout_p == 1 else self.dropout_p,
                             sinks=self.sinks, lse_wanted=self.return_lse)
        return self._call

    def route(self):
        return routing.choose(self.q.device, self.torch_lacks, self.metal_lacks, dropout=self.dropout_p > 0,
                              pytorch_path=lambda forced: pytorch_paths.choice(self.call(), forced))

    def run(self, route):
        """(out, lse or None) in the caller's layout, on a route other than torch-sdpa."""
        out, lse = self.call().run(route.name)
        if self.dropout_p == 1:
            out = out * 0
        lead = self.batch + (self.Hq,) if self.q.dim() >= 3 else ()
        return out.reshape(*lead, self.L, out.shape[-1]), None if lse is None else lse.reshape(*lead, self.L)


def _sdpa_request(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window_size, alibi_slopes,
                  softcap, sinks, return_lse):
    """(request, route) of an sdpa call; request None when the call goes to PyTorch's function as it is."""
    mask = None if isinstance(attn_mask, CausalBias) else attn_mask  # a subclass mfa_torch reads itself
    foreign = next(((name, t) for name, t in (("query", query), ("key", key), ("value", value), ("attn_mask", mask),
                                              ("alibi_slopes", alibi_slopes)) if overrides_torch_functions(t)), None)
    if foreign is not None:
        name, t = foreign
        kind = "a nested tensor" if t.is_nested else f"a {type(t).__name__}"
        extras = [extra for extra, given in (("window_size", window_size is not None),
                                             ("alibi_slopes", alibi_slopes is not None), ("softcap", softcap != 0),
                                             ("sinks", sinks is not None), ("return_lse", return_lse is True))
                  if given]
        require(not extras, f"{name} is {kind}: PyTorch's scaled_dot_product_attention decides what such calls "
                            f"mean (mfa_torch hands them to it), and it has no {', '.join(extras)}",
                ArgumentTypeError)
        return None, routing.Route("torch-sdpa", f"{name} is {kind}, whose type gives PyTorch's functions their "
                                                 "meaning: the call goes to PyTorch's SDPA unchanged")
    request = _SdpaRequest(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window_size,
                           alibi_slopes, softcap, sinks, return_lse)
    return request, request.route()


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, window_size=None, alibi_slopes=None, softcap=0.0,
                                 sinks=None, return_lse=False):
    """Drop-in for torch.nn.functional.scaled_dot_product_attention, with keyword-only extras.

    attn_mask may be torch.nn.attention.bias.causal_upper_left / causal_lower_right. window_size=(left, right):
    query i attends keys i - left .. i + right (-1 = unbounded), aligned like the causal structure (upper left;
    lower right with causal_lower_right). alibi_slopes (Hq,) or (N..., Hq): adds -slope * |i - j|. softcap > 0:
    scores = softcap * tanh(scores / softcap) before ALiBi and masks. sinks (Hq,): attention sinks (GPT-OSS), one
    extra logit per query head in every row's softmax whose probability leaves the output (no value vector); the
    lse includes it, and a sinks tensor that requires grad gets its gradient. return_lse=True also returns the log-sum-exp,
    fp32, natural log, shape (N..., Hq, L). Rows that attend no key give 0 (and lse -inf, zero gradients), never NaN.
    Dropout on mfa_torch's kernels uses mfa_torch's counter-based keep mask, not PyTorch's RNG stream.
    Tensor subclasses with their own __torch_function__ (and nested tensors) go to PyTorch's function unchanged.
    """
    request, route = _sdpa_request(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window_size,
                                   alibi_slopes, softcap, sinks, return_lse)
    if request is None:
        return _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    if route.name == "torch-sdpa":
        return request.torch_sdpa()
    out, lse = request.run(route)
    return (out, lse) if return_lse else out


def explain(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
            window_size=None, alibi_slopes=None, softcap=0.0, sinks=None, return_lse=False):
    """Which route scaled_dot_product_attention would take for these arguments, and why (a short string)."""
    return str(_sdpa_request(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window_size,
                             alibi_slopes, softcap, sinks, return_lse)[1])


# ---------------------------------------------------------------------------------------------------------
# FlashAttention API

# return_attn_probs=True with dropout materialises the probabilities (FlashAttention's S_dmask, a debugging aid):
# up to this many elements, 256 MiB in fp32.
MAX_ATTN_PROBS_ELEMENTS = 1 << 26


def _flash_options(dropout_p, softmax_scale, causal, window_size, softcap, head_dim):
    require(isinstance(causal, bool), "causal must be a bool", ArgumentTypeError)
    left, right = check_window(window_size)
    scale = (1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0) if softmax_scale is None else \
        check_scale("softmax_scale", softmax_scale)
    return (check_dropout(dropout_p), scale, (left, 0 if causal else right),
            check_softcap("softcap", softcap))


def _check_attn_probs(return_attn_probs, dropout_p, shape):
    """Whether the call returns S_dmask (return_attn_probs with dropout, as FlashAttention), of this shape."""
    require(isinstance(return_attn_probs, bool), "return_attn_probs must be a bool", ArgumentTypeError)
    wanted = return_attn_probs and dropout_p > 0
    require(not wanted or math.prod(shape) <= MAX_ATTN_PROBS_ELEMENTS,
            f"return_attn_probs=True with dropout_p > 0 returns the attention probabilities S_dmask of shape {shape}: "
            f"{math.prod(shape)} elements, above mfa_torch's limit of {MAX_ATTN_PROBS_ELEMENTS} "
            "(mfa_torch.attention.MAX_ATTN_PROBS_ELEMENTS); pass return_attn_probs=False (or dropout_p=0.0, which "
            "returns the log-sum-exp without S_dmask)")
    return wanted


def _route(call, torch_lacks, metal_lacks):
    return routing.choose(call.q.device, torch_lacks, metal_lacks, dropout=call.dropout_p > 0,
                          pytorch_path=lambda forced: pytorch_paths.choice(call, forced))


def _flash_run(call, route, return_attn_probs, with_probs, finish):
    """Runs `call` on `route` (not torch-sdpa); returns finish(out), or (finish(out), lse, S_dmask or None) for
    return_attn_probs."""
    out, lse = call.run(route.name)
    if not return_attn_probs:
        return finish(out)
    return finish(out), lse, call.dropped_probabilities() if with_probs else None


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, s_aux=None):
    """FlashAttention's flash_attn_func: q (B, Sq, H, D), k/v (B, Sk, Hk, D/Dv), H a multiple of Hk.

    Causal and windows are aligned to the bottom right. Returns out (B, Sq, H, Dv); with return_attn_probs=True
    returns (out, lse (B, H, Sq) fp32, S_dmask): with dropout, S_dmask is (B, H, Sq, Sk) in q's dtype, the softmax
    probabilities with the dropped ones negated; without dropout, None. window_size: any pair of ints (or a
    2-element integer tensor). Dropout uses mfa_torch's counter-based keep mask (the backward regenerates it), not
    PyTorch's RNG stream. `deterministic` is accepted for compatibility: mfa_torch's backward is always
    deterministic. s_aux (H,): attention sinks, as `sinks` of scaled_dot_product_attention.
    """
    check_float_tensors(q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        require(t.dim() == 4, f"{name} must be 4-D (batch, seqlen, heads, head_dim), got shape {tuple(t.shape)}")
    B, Sq, H, D = q.shape
    require(k.shape[0] == B and v.shape[0] == B, f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    require(k.shape[3] == D, f"k head_dim {k.shape[3]} must equal q head_dim {D}")
    require(v.shape[1] == k.shape[1], f"v seqlen {v.shape[1]} must equal k seqlen {k.shape[1]}")
    _check_heads(H, k.shape[2], v.shape[2], True, ("q", "k", "v"))
    dropout_p, scale, window, softcap = _flash_options(dropout_p, softmax_scale, causal, window_size, softcap, D)
    alibi = None if alibi_slopes is None else _check_alibi(alibi_slopes, q, {(H,), (B, H)}, f"({H},) or ({B}, {H})")
    sinks = None if s_aux is None else _check_sinks(s_aux, q, H, "s_aux")
    Sk = k.shape[1]
    with_probs = _check_attn_probs(return_attn_probs, dropout_p, (B, H, Sq, Sk))
    torch_lacks = [name for name, wanted in (
        ("window_size", window != (-1, 0 if causal else -1)),
        ("bottom-right causal alignment with seqlen_q != seqlen_k", causal and Sq != Sk),
        ("alibi_slopes", alibi is not None),
        ("softcap", softcap > 0),
        ("s_aux (attention sinks)", sinks is not None),
        ("return_attn_probs (log-sum-exp)", return_attn_probs)) if wanted]
    call = AttentionCall(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), alibi=alibi, scale=scale,
                         window=window, bottom_right=True, softcap=softcap, dropout_p=dropout_p, sinks=sinks,
                         lse_wanted=return_attn_probs)
    route = _route(call, torch_lacks, metal_attention.metal_lacks(q.dtype, D, v.shape[3]))
    if route.name == "torch-sdpa":
        out = _torch_sdpa(call.q, call.k, call.v, None, dropout_p, causal, scale=softmax_scale,
                          enable_gqa=H != k.shape[2])
        return out.transpose(1, 2).contiguous()
    return _flash_run(call, route, return_attn_probs, with_probs, lambda out: out.transpose(1, 2).contiguous())


def _check_cu_seqlens(name, cu, device):
    """Type, shape and device here; the values are checked by the op when it runs (they live on the device,
    and reading them here would break torch.compile tracing)."""
    require(isinstance(cu, torch.Tensor), f"{name} must be a torch.Tensor", ArgumentTypeError)
    require(cu.dtype == torch.int32, f"{name} must be int32, got {cu.dtype}", ArgumentTypeError)
    require(cu.dim() == 1 and cu.shape[0] >= 2, f"{name} must be 1-D of length batch + 1 (at least 2), got "
                                                f"shape {tuple(cu.shape)}")
    require(cu.device == device, f"{name} is on {cu.device} but q is on {device}")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *, s_aux=None):
    """FlashAttention's varlen API: sequences packed along dim 0, q (total_q, H, D), k/v (total_k, Hk, D/Dv),
    cu_seqlens int32 (batch + 1,) starting at 0. Each sequence attends within itself, causal and windows
    aligned to its bottom right. Returns out (total_q, H, Dv); with return_attn_probs=True
    (out, lse (H, total_q) fp32, S_dmask): with dropout, S_dmask is (batch, H, max_seqlen_q, max_seqlen_k), each
    sequence's probabilities (dropped ones negated) in its top-left corner and 0 elsewhere; without dropout, None.
    Rows past cu_seqlens_q[-1] get 0. s_aux (H,): attention sinks, as in flash_attn_func.
    block_table (batch, max_pages) int32: k and v are paged caches (num_blocks, page_size, Hk, D / Dv), sequence b's
    key j at row j % page_size of page block_table[b, j // page_size], cu_seqlens_k giving the key counts (forward
    only: no dropout, no backward)."""
    check_float_tensors(q=q, k=k, v=v)
    paged = block_table is not None
    kv_layout = "(num_blocks, page_size, heads, head_dim)" if paged else "(total_tokens, heads, head_dim)"
    require(q.dim() == 3, f"q must be 3-D (total_tokens, heads, head_dim), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        require(t.dim() == 3 + paged, f"{name} must be {3 + paged}-D {kv_layout}, got shape {tuple(t.shape)}")
    total_q, H, D = q.shape
    require(k.shape[-1] == D, f"k head_dim {k.shape[-1]} must equal q head_dim {D}")
    require(v.shape[:-2] == k.shape[:-2], f"v {tuple(v.shape)} and k {tuple(k.shape)} must agree on all but heads and "
                                          "head dim")
    _check_heads(H, k.shape[-2], v.shape[-2], True, ("q", "k", "v"))
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q.device)
    require(cu_seqlens_q.shape == cu_seqlens_k.shape,
            f"cu_seqlens_q and cu_seqlens_k must have the same length, got {cu_seqlens_q.shape[0]} and "
            f"{cu_seqlens_k.shape[0]}")
    for name, given in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        require(isinstance(given, numbers.Integral) and not isinstance(given, bool),
                f"{name} must be an int, got {type(given).__name__}", ArgumentTypeError)
    dropout_p, scale, window, softcap = _flash_options(dropout_p, softmax_scale, causal, window_size, softcap, D)
    batch = cu_seqlens_q.shape[0] - 1
    alibi = None if alibi_slopes is None else \
        _check_alibi(alibi_slopes, q, {(H,), (batch, H)}, f"({H},) or ({batch}, {H})")
    sinks = None if s_aux is None else _check_sinks(s_aux, q, H, "s_aux")
    with_probs = _check_attn_probs(return_attn_probs, dropout_p, (batch, H, int(max_seqlen_q), int(max_seqlen_k)))
    canonical = lambda t: t.transpose(0, 1).unsqueeze(0)  # noqa: E731
    if paged:
        return _paged_varlen(q, k, v, block_table, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                             dropout_p, alibi, scale, window, softcap, sinks, return_attn_probs)
    call = AttentionCall(canonical(q), canonical(k), canonical(v), alibi=alibi, cu_q=cu_seqlens_q, cu_k=cu_seqlens_k,
                         max_q=int(max_seqlen_q), max_k=int(max_seqlen_k), scale=scale, window=window,
                         bottom_right=True, softcap=softcap, dropout_p=dropout_p, sinks=sinks,
                         lse_wanted=return_attn_probs)
    route = _route(call, ["varlen (cu_seqlens)"], metal_attention.metal_lacks(q.dtype, D, v.shape[2]))
    result = _flash_run(call, route, return_attn_probs, with_probs, lambda out: out[0].transpose(0, 1).contiguous())
    return (result[0], result[1][0], result[2]) if return_attn_probs else result


def _paged_varlen(q, k, v, block_table, cu_q, cu_k, max_q, max_k, dropout_p, alibi, scale, window, softcap, sinks,
                  return_attn_probs):
    """flash_attn_varlen_func reading K and V from a paged cache (FlashAttention 2's paged varlen forward)."""
    require(dropout_p == 0, f"dropout_p must be 0 with block_table (a paged cache is for inference), got {dropout_p}")
    batch = cu_q.shape[0] - 1
    require(isinstance(block_table, torch.Tensor) and block_table.dtype == torch.int32 and block_table.dim() == 2
            and block_table.shape[0] == batch and block_table.device == q.device,
            f"block_table must be an int32 tensor of shape ({batch}, max_pages) on {q.device}, got "
            + (f"{block_table.dtype} {tuple(block_table.shape)} on {block_table.device}"
               if isinstance(block_table, torch.Tensor) else type(block_table).__name__))
    spans = torch.stack([torch.zeros_like(cu_k[1:]), cu_k[1:] - cu_k[:-1]], dim=1)
    call = AttentionCall(q.transpose(0, 1).unsqueeze(0), k.transpose(1, 2), v.transpose(1, 2), alibi=alibi, cu_q=cu_q,
                         max_q=max_q, max_k=max_k, scale=scale, window=window, bottom_right=True, softcap=softcap,
                         sinks=sinks, pages=PagedKV(block_table, spans), lse_wanted=return_attn_probs)
    route = routing.choose(q.device, ["a paged K/V cache (block_table)"],
                           metal_attention.metal_lacks(q.dtype, q.shape[2], v.shape[3]))
    out, lse = call.run(route.name)
    out = out[0].transpose(0, 1).contiguous()
    return (out, lse[0], None) if return_attn_probs else out


# Packed inputs: FlashAttention's layouts with q, k, v (or k, v) stacked along one dimension. They reach the
# ops as views of the packed tensor (unbind), never copies; the gradient of the packed tensor is assembled by
# autograd from the views' gradients.

def _unpack(name, packed, dim, count, layout):
    require(isinstance(packed, torch.Tensor), f"{name} must be a torch.Tensor, got {type(packed).__name__}",
            ArgumentTypeError)
    require(packed.dim() == len(layout) and packed.shape[dim] == count,
            f"{name} must have shape {layout}, got {tuple(packed.shape)}")
    return packed.unbind(dim)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_func on qkv (B, S, 3, H, D): q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]."""
    q, k, v = _unpack("qkv", qkv, 2, 3, ("batch", "seqlen", 3, "heads", "head_dim"))
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_func on q (B, Sq, H, D) and kv (B, Sk, 2, Hk, D): k, v = kv[:, :, 0], kv[:, :, 1]."""
    k, v = _unpack("kv", kv, 2, 2, ("batch", "seqlen_k", 2, "heads_k", "head_dim"))
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """flash_attn_varlen_func on qkv (total, 3, H, D), the queries' and keys' sequences the same."""
    q, k, v = _unpack("qkv", qkv, 1, 3, ("total", 3, "heads", "head_dim"))
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
                                  causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_varlen_func on q (total_q, H, D) and kv (total_k, 2, Hk, D)."""
    k, v = _unpack("kv", kv, 1, 2, ("total_k", 2, "heads_k", "head_dim"))
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)
