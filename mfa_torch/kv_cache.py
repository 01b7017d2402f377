"""FlashAttention 2's KV-cache API: flash_attn_with_kvcache, on contiguous or paged caches.

One call validates everything (shapes, then the values, in one read of the small index tensors) before anything is
written, appends the new keys and values into the cache (rotating the keys, shaders/kv_cache_append.metal), rotates
the queries (shaders/rotary_embedding.metal) and attends through the cache's pages (shaders/attention_pages.h): the
cache itself is read once, by the attention, and never copied or rotated again.
"""
import numbers

import torch

from . import routing
from ._validation import ArgumentTypeError, check_float_tensors, require
from .attention import _check_alibi, _check_heads, _check_sinks, _flash_options
from .attention_call import AttentionCall
from .metal import attention as metal_attention
from .paged_kv import PagedKV
from . import cache_ops  # noqa: F401  (registers mfa::kv_cache_append and mfa::rotary_embedding)


def _check_index_tensor(name, t, rows, device, cols=None):
    """An int32 (rows,) tensor, or (rows, any) when cols is "max_pages"."""
    require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor", ArgumentTypeError)
    require(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}", ArgumentTypeError)
    require(t.device == device, f"{name} is on {t.device} but q is on {device}")
    shape = (rows,) if cols is None else (rows, cols)
    require(t.dim() == len(shape) and t.shape[0] == rows, f"{name} must have shape {shape}, got {tuple(t.shape)}")


class _CacheCall:
    """A validated flash_attn_with_kvcache call: the cache as pages, where the new tokens go, what attends."""

    def __init__(self, q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                 cache_leftpad, block_table, rotary_interleaved, num_splits):
        check_float_tensors(q=q, k_cache=k_cache, v_cache=v_cache)
        for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
            require(t.dim() == 4, f"{name} must be 4-D, got shape {tuple(t.shape)}")
            require(t.dtype == q.dtype, f"{name} has dtype {t.dtype} but q has {q.dtype}")
            require(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
        B, Lq, H, D = q.shape
        self.B, self.Lq, self.H = B, Lq, H
        require(tuple(v_cache.shape[:3]) == tuple(k_cache.shape[:3]),
                f"k_cache and v_cache must agree on all but the head dim, got {tuple(k_cache.shape)} and "
                f"{tuple(v_cache.shape)}")
        require(k_cache.shape[3] == D, f"k_cache head dim {k_cache.shape[3]} must equal q head dim {D}")
        Hk, self.Dv = k_cache.shape[2], v_cache.shape[3]
        _check_heads(H, Hk, Hk, True, ("q", "k_cache", "v_cache"))
        self.q, self.k_cache, self.v_cache = q, k_cache, v_cache

        self.k = self.v = None
        require((k is None) == (v is None), "k and v (the new tokens) must be given together")
        if k is not None:
            check_float_tensors(k=k, v=v)
            for name, t, dim in (("k", k, D), ("v", v, self.Dv)):
                require(t.dim() == 4 and t.shape[0] == B and t.shape[2] == Hk and t.shape[3] == dim,
                        f"{name} must have shape ({B}, seqlen_new, {Hk}, {dim}), got {tuple(t.shape)}")
                require(t.dtype == q.dtype and t.device == q.device,
                        f"{name} must have q's dtype and device ({q.dtype}, {q.device}), got ({t.dtype}, {t.device})")
            require(v.shape[1] == k.shape[1], f"k and v must have the same seqlen_new, got {k.shape[1]} and "
                                              f"{v.shape[1]}")
            self.k, self.v = k, v
        self.new = 0 if k is None else k.shape[1]

        self.rotary = None
        require((rotary_cos is None) == (rotary_sin is None), "rotary_cos and rotary_sin must be given together")
        if rotary_cos is not None:
            require(k is not None, "rotary_cos and rotary_sin need the new k and v: the rotation is applied as they "
                                   "are appended (FlashAttention's rule)")
            for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
                require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor", ArgumentTypeError)
                require(t.dtype in (q.dtype, torch.float32), f"{name} must be {q.dtype} or float32, got {t.dtype}",
                        ArgumentTypeError)
                require(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
                require(t.dim() == 2 and 1 <= 2 * t.shape[1] <= D,
                        f"{name} must have shape (seqlen_ro, rotary_dim / 2) with rotary_dim <= headdim ({D}), got "
                        f"{tuple(t.shape)}")
            require(rotary_cos.shape == rotary_sin.shape and rotary_cos.dtype == rotary_sin.dtype,
                    f"rotary_cos and rotary_sin must have the same shape and dtype, got {tuple(rotary_cos.shape)} "
                    f"{rotary_cos.dtype} and {tuple(rotary_sin.shape)} {rotary_sin.dtype}")
            require(isinstance(rotary_interleaved, bool), "rotary_interleaved must be a bool", ArgumentTypeError)
            self.rotary = (rotary_cos, rotary_sin)
        self.interleaved = rotary_interleaved

        # The cache as pages: a paged cache is one already; a contiguous one has a page per cache row.
        if block_table is not None:
            require(cache_batch_idx is None, "cache_batch_idx cannot be combined with block_table (a paged cache "
                                             "selects its pages through block_table)")
            _check_index_tensor("block_table", block_table, B, q.device, "max_pages")
            self.table = block_table
        else:
            if cache_batch_idx is not None:
                _check_index_tensor("cache_batch_idx", cache_batch_idx, B, q.device)
                self.table = cache_batch_idx.view(B, 1)
            else:
                require(k_cache.shape[0] >= B, f"k_cache holds {k_cache.shape[0]} sequences but q has batch {B}: "
                                               "pass cache_batch_idx to select them")
                self.table = torch.arange(B, dtype=torch.int32, device=q.device).view(B, 1)
        self.page_size = k_cache.shape[1]
        self.capacity = self.table.shape[1] * self.page_size  # cache positions of one sequence
        self.paged = block_table is not None

        if cache_seqlens is None:
            require(k is None, "cache_seqlens is needed to append k and v (where the new tokens go)")
            seqlens = torch.full((B,), self.capacity, dtype=torch.int32, device=q.device)
        elif isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
            seqlens = torch.full((B,), int(cache_seqlens), dtype=torch.int32, device=q.device)
        else:
            _check_index_tensor("cache_seqlens", cache_seqlens, B, q.device)
            seqlens = cache_seqlens
        self.seqlens = seqlens
        if cache_leftpad is not None:
            _check_index_tensor("cache_leftpad", cache_leftpad, B, q.device)
        self.leftpad = cache_leftpad
        require(isinstance(num_splits, numbers.Integral) and not isinstance(num_splits, bool) and num_splits >= 0,
                f"num_splits must be an int >= 0 (0: the planner's choice), got {num_splits!r}")
        self.num_splits = int(num_splits)

    def check_values(self, same_position):
        """One read of the index tensors: every position within the cache and the rotary tables, every page and
        cache row within k_cache. same_position: the queries rotate at cache_seqlens (not causal, not local:
        FlashAttention's rule), else at their own positions. Sets the longest key count."""
        self.same_position = same_position
        seqlens = self.seqlens.tolist()
        leftpad = [0] * self.B if self.leftpad is None else self.leftpad.tolist()
        table = self.table.tolist()
        pages = self.k_cache.shape[0]
        for b in range(self.B):
            end = seqlens[b] + self.new
            require(seqlens[b] >= 0 and end <= self.capacity,
                    f"cache_seqlens[{b}] = {seqlens[b]}" + (f" plus {self.new} new tokens" if self.new else "") +
                    f" is past the cache's {self.capacity} positions")
            require(0 <= leftpad[b] <= seqlens[b], f"cache_leftpad[{b}] = {leftpad[b]} must be in [0, "
                                                   f"cache_seqlens[{b}] = {seqlens[b]}]")
            name = "block_table" if self.paged else "cache_batch_idx"
            for j in range(leftpad[b] // self.page_size, -(-end // self.page_size)):
                require(0 <= table[b][j] < pages, f"{name}[{b}" + (f", {j}]" if self.paged else "]") +
                        f" = {table[b][j]} is not a {'page' if self.paged else 'sequence'} of k_cache "
                        f"(0..{pages - 1})")
            if self.rotary is not None:
                last = seqlens[b] + max(self.new, 1 if self.same_position else self.Lq) - 1
                require(last < self.rotary[0].shape[0], f"rotary_cos and rotary_sin have {self.rotary[0].shape[0]} "
                                                        f"positions but sequence {b} reaches position {last}")
        self.longest = max((s + self.new - p for s, p in zip(seqlens, leftpad)), default=0)

    def append(self):
        """Writes the new keys (rotated) and values into the cache at cache_seqlens."""
        if self.k is None:
            return
        cos, sin = self.rotary if self.rotary is not None else (None, None)
        torch.ops.mfa.kv_cache_append(self.k_cache.transpose(1, 2), self.v_cache.transpose(1, 2),
                                      self.k.transpose(1, 2), self.v.transpose(1, 2), self.table, self.seqlens, cos,
                                      sin, self.interleaved)

    def queries(self):
        """q in the ops' (B, H, Lq, D) layout, rotated at its positions when rotary tables are given."""
        q = self.q.transpose(1, 2)
        if self.rotary is None:
            return q
        return torch.ops.mfa.rotary_embedding(q, self.seqlens, *self.rotary, self.interleaved, self.same_position)

    def pages(self):
        first = torch.zeros_like(self.seqlens) if self.leftpad is None else self.leftpad
        spans = torch.stack([first, self.seqlens + self.new - first], dim=1).to(torch.int32)
        return PagedKV(self.table.contiguous(), spans)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False, *,
                            s_aux=None):
    """FlashAttention 2's flash_attn_with_kvcache: q (B, Lq, H, D) attends the cache, after the new k, v
    (B, L_new, Hk, D / Dv) are written into it in place at cache_seqlens (int or (B,) int32).

    Caches: contiguous (batch_cache, seqlen_cache, Hk, D / Dv), rows picked by cache_batch_idx ((B,) int32; default
    0..B-1), or paged (num_blocks, page_size, Hk, D / Dv) with block_table (B, max_pages) int32: cache position c of
    sequence b is row c % page_size of page block_table[b, c // page_size]. Any page size (FlashAttention requires 256).
    cache_leftpad ((B,) int32): sequence b's cache starts at that position (keys before it are not attended).
    Rotary (rotary_cos, rotary_sin (seqlen_ro, rotary_dim / 2)): the new k rotate at their cache positions
    cache_seqlens + i; q at cache_seqlens + i when causal or local (window_size), else all at cache_seqlens;
    rotary_interleaved True: GPT-J pairs (0, 1), (2, 3)...; False: GPT-NeoX pairs (i, i + rotary_dim / 2).
    Causal and windows align to each sequence's bottom right; alibi_slopes (H,) or (B, H); softcap; s_aux (H,)
    attention sinks. num_splits: key splits (0: the planner's). Returns out (B, Lq, H, Dv), and with
    return_softmax_lse also lse (B, H, Lq) fp32. Inference only (no backward). Every argument is checked before
    anything is written to the cache.
    """
    require(isinstance(return_softmax_lse, bool), "return_softmax_lse must be a bool", ArgumentTypeError)
    call = _CacheCall(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                      cache_leftpad, block_table, rotary_interleaved, num_splits)
    _, scale, window, softcap = _flash_options(0.0, softmax_scale, causal, window_size, softcap, q.shape[3])
    alibi = None if alibi_slopes is None else \
        _check_alibi(alibi_slopes, q, {(call.H,), (call.B, call.H)}, f"({call.H},) or ({call.B}, {call.H})")
    sinks = None if s_aux is None else _check_sinks(s_aux, q, call.H, "s_aux")
    call.check_values(same_position=not causal and window == (-1, -1))
    route = routing.choose(q.device, ["a K/V cache (flash_attn_with_kvcache)"],
                           metal_attention.metal_lacks(q.dtype, q.shape[3], call.Dv))
    call.append()
    attention = AttentionCall(call.queries(), call.k_cache.transpose(1, 2), call.v_cache.transpose(1, 2), alibi=alibi,
                              max_q=call.Lq, max_k=call.longest, scale=scale, window=window, bottom_right=True,
                              softcap=softcap, sinks=sinks, pages=call.pages(), num_splits=call.num_splits,
                              lse_wanted=return_softmax_lse)
    out, lse = attention.run(route.name)
    out = out.transpose(1, 2).contiguous()
    return (out, lse) if return_softmax_lse else out

