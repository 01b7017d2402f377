"""mfa_torch.flex_attention: the signature of torch.nn.attention.flex_attention.flex_attention on mfa_torch's ops.

A BlockMask (create_block_mask, any BLOCK_SIZE) goes to the attention ops in compact form (block_masks.py): the
Metal kernels never load its empty blocks, compute its full blocks with no per-element mask, and read the mask_mod's
bits in its partial blocks; forward and backward. A score_mod runs on the reference route: PyTorch operations over
chunks of queries, each chunk recomputed by the backward (activation checkpointing), so the memory of the forward and
the backward stays O(chunk x S); a Metal path for score_mod is a later step.
"""
import math

import torch
from torch.utils.checkpoint import checkpoint

from . import block_masks, reference, routing
from ._validation import FLOAT_DTYPES, require
from .attention_call import AttentionCall
from .metal import attention as metal_attention

_SCORES_PER_CHUNK = 1 << 22  # score_mod route: scores formed at once
_SCORE_MOD_REASON = ("score_mod: mfa_torch runs it with PyTorch operations, chunked over queries (the Metal kernels "
                     "do not take a score_mod yet)")


def _check(query, key, value, enable_gqa):
    for name, t in (("query", query), ("key", key), ("value", value)):
        require(isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}", TypeError)
        require(t.dim() == 4, f"{name} must be 4-D (batch, heads, seqlen, head_dim), got shape {tuple(t.shape)}")
        require(t.dtype in FLOAT_DTYPES, f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        require(t.dtype == query.dtype and t.device == query.device,
                f"{name} ({t.dtype}, {t.device}) must match query ({query.dtype}, {query.device})")
    B, Hq, _, E = query.shape
    require(key.shape[0] == B and value.shape[0] == B, "query, key and value must have the same batch size")
    require(key.shape[3] == E, f"key head_dim {key.shape[3]} != query head_dim {E}")
    require(value.shape[1:3] == key.shape[1:3], f"value shape {tuple(value.shape)} does not match key "
                                                f"{tuple(key.shape)}")
    Hk = key.shape[1]
    require(Hq == Hk or (enable_gqa and Hk > 0 and Hq % Hk == 0),
            f"query has {Hq} heads and key {Hk}: pass enable_gqa=True for grouped-query attention (query heads a "
            f"multiple of key heads)" if not enable_gqa else f"query heads ({Hq}) must be a multiple of key heads "
                                                            f"({Hk})")


def _route(query, value, score_mod):
    if score_mod is not None:
        return routing.Route("reference", _SCORE_MOD_REASON)
    return routing.choose(query.device, None, metal_attention.metal_lacks(query.dtype, query.shape[3],
                                                                          value.shape[3]))


def flex_attention(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False,
                   return_lse=False, kernel_options=None):
    """Drop-in for torch.nn.attention.flex_attention.flex_attention (query (B, Hq, L, E), key (B, Hk, S, E), value
    (B, Hk, S, Ev)). block_mask: a BlockMask for exactly L queries and S keys. score_mod(score, b, h, q_idx, kv_idx)
    is called with broadcasting index tensors (written with torch operations, as for torch.compile). return_lse also
    returns the log-sum-exp (natural log, float32; -inf for rows that attend nothing, whose output is 0).
    kernel_options (Triton tuning knobs) are accepted and have no effect."""
    _check(query, key, value, enable_gqa)
    scale = 1.0 / math.sqrt(query.shape[3]) if scale is None else float(scale)
    L, S = query.shape[2], key.shape[2]
    blocks = None if block_mask is None else block_masks.compact(block_mask, query.shape[0], query.shape[1], L, S,
                                                                 query.device)
    route = _route(query, value, score_mod)
    if score_mod is not None:
        routing.warn_once("flex-score-mod", f"mfa_torch.flex_attention: {_SCORE_MOD_REASON}")
        out, lse = _score_mod_attention(query, key, value, score_mod, blocks, scale)
    else:
        out, lse = AttentionCall(query, key, value, scale=scale, blocks=blocks, lse_wanted=return_lse).run(route.name)
    return (out, lse.float()) if return_lse else out


def explain(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False, return_lse=False,
            kernel_options=None):
    """Which route flex_attention would take for these arguments, and why (a short string)."""
    _check(query, key, value, enable_gqa)
    return str(_route(query, value, score_mod))


def _score_mod_attention(q, k, v, score_mod, blocks, scale):
    """(out, lse) with score_mod applied to the scaled scores, over chunks of queries (each recomputed by the
    backward when autograd needs it)."""
    B, Hq, L, _ = q.shape
    G = Hq // k.shape[1]
    k, v = (t.repeat_interleave(G, dim=1) if G > 1 else t for t in (k, v))
    chunk = max(1, _SCORES_PER_CHUNK // max(1, B * Hq * k.shape[2]))
    outs, lses = [], []
    for i0 in range(0, L, chunk):
        i1 = min(L, i0 + chunk)

        def piece(q_rows, k, v, i0=i0, i1=i1):
            return _chunk(q_rows, k, v, i0, i1, score_mod, blocks, scale)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        out, lse = checkpoint(piece, q[:, :, i0:i1], k, v, use_reentrant=False) if needs_grad else \
            piece(q[:, :, i0:i1], k, v)
        outs.append(out)
        lses.append(lse)
    if not outs:
        return q.new_zeros(B, Hq, 0, v.shape[3]), torch.zeros(B, Hq, 0, device=q.device)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _chunk(q, k, v, i0, i1, score_mod, blocks, scale):
    acc = reference.stats_dtype(q.dtype)
    device = q.device
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    b = torch.arange(q.shape[0], device=device).view(-1, 1, 1, 1)
    h = torch.arange(q.shape[1], device=device).view(1, -1, 1, 1)
    q_idx = torch.arange(i0, i1, device=device).view(1, 1, -1, 1)
    kv_idx = torch.arange(k.shape[2], device=device).view(1, 1, 1, -1)
    s = torch.as_tensor(score_mod(s, b, h, q_idx, kv_idx), dtype=acc, device=device).expand(s.shape)
    if blocks is not None:
        s = s.masked_fill(~block_masks.allowed(*blocks, i0, i1, 0, k.shape[2]), float("-inf"))
    row_max = s.amax(-1, keepdim=True)
    attends = row_max > float("-inf")
    shift = torch.where(attends, row_max, torch.zeros_like(row_max))
    p = torch.exp(s - shift)
    total = p.sum(-1, keepdim=True)
    out = torch.matmul(p / torch.where(attends, total, torch.ones_like(total)), v.to(acc))
    lse = torch.where(attends, shift + torch.log(total), torch.full_like(total, float("-inf"))).squeeze(-1)
    return out.to(q.dtype), lse
