"""Memory-bounded PyTorch kernels for the mfa ops on devices without Metal kernels.

This is the *reference route* that users get on CPU/CUDA for features PyTorch's SDPA lacks. It is NOT the
test oracle (the tests carry their own naive fp64 attention).

Attention is computed over query blocks x key blocks with an online softmax (FlashAttention's algorithm in
PyTorch operations): the extra memory is one block of scores per (batch, head), never L x S. Blocks that
the causal/window structure masks completely are skipped. The forward saves each row's softmax stats (max m,
sum l); the backward recomputes the scores block by block from q and k with the same operations and the
probabilities as exp(s - m) / l, and takes D = rowsum(P * dP) from those probabilities (PyTorch's softmax
backward). Accumulation is in fp32 (fp64 for fp64 inputs).
"""
import math

import torch

from . import block_masks
from .block_masks import CompactBlockMask

# PyTorch's matmul, bound at import: mfa_torch.patch(matmul=True) may later replace torch.matmul with mfa_torch's.
_matmul = torch.matmul

_BLOCK_ELEMENTS = 1 << 22  # scores per block across all (batch, head) pairs: bounds the extra memory
_KEPT_BLOCKS = 4  # key blocks of one query block whose backward terms are kept rather than recomputed
_MASK32 = 0xFFFFFFFF


def _block_size(batch_heads):
    side = int(math.sqrt(_BLOCK_ELEMENTS / max(batch_heads, 1)))
    return max(16, min(512, 1 << (side.bit_length() - 1)))


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def stats_dtype(dtype):
    """The softmax stats are fp32 (fp64 for fp64 inputs, whose gradients would otherwise lose precision)."""
    return _acc_dtype(dtype)


# ---------------------------------------------------------------------------------------------------------
# Dropout: a counter-based keep mask, regenerated from (seed, offset, batch, head, row, column) so that the
# forward and the backward agree without storing it. Metal kernels implement the same function.
# Multipliers stay below 2^31 so every product of a 32-bit value fits in a signed 64-bit integer.

def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def _seed_keys(seed):
    seed_lo, seed_hi = seed & _MASK32, (seed >> 32) & _MASK32
    return _mix32(seed_lo ^ 0x9E3779B9), _mix32(seed_hi ^ 0x7F4A7C15)


def _keep(seed, offset, p, counter):
    """Keep mask for int64 counters: keep with probability 1 - p."""
    key_lo, key_hi = _seed_keys(seed)
    lo, hi = counter & _MASK32, (counter >> 32) & _MASK32
    h = _mix32(_mix32(lo ^ key_lo) ^ hi ^ key_hi)
    return h >= int(p * 4294967296.0)


def _counters(offset, heads, rows, cols, b, h, i, j):
    """Counter of element (b, h, i, j) of a dense (B, heads, rows, cols) problem; arguments broadcast."""
    return offset + ((b * heads + h) * rows + i) * cols + j


def dropout_keep_mask(seed, offset, batch, heads, L, S, p, device="cpu"):
    """The (batch, heads, L, S) bool keep mask the mfa ops use for dropout probability p and (seed, offset).

    Debug entry point: lets tests and users reproduce exactly which attention probabilities were kept.
    For varlen calls, batch is the sequence index and L, S are max_seqlen_q, max_seqlen_k.
    """
    ar = lambda n: torch.arange(n, dtype=torch.int64, device=device)  # noqa: E731
    counter = _counters(offset, heads, L, S, ar(batch).view(-1, 1, 1, 1), ar(heads).view(1, -1, 1, 1),
                        ar(L).view(1, 1, -1, 1), ar(S).view(1, 1, 1, -1))
    return _keep(seed, offset, p, counter)


# ---------------------------------------------------------------------------------------------------------
# One dense problem: q (B, Hk, G, L, E), k (B, Hk, 1, S, E), v (B, Hk, 1, S, Ev) in the accumulation dtype.

class _Problem:
    """A dense attention problem in grouped layout plus everything needed to score one block."""

    def __init__(self, q, k, v, mask, alibi, scale, window, bottom_right, softcap, dropout, batch0, rng_dims):
        B, Hq, L, E = q.shape
        Hk, S = k.shape[1], k.shape[2]
        self.G = Hq // Hk if Hk else 1  # no heads at all: an empty problem
        self.B, self.Hq, self.Hk, self.L, self.S = B, Hq, Hk, L, S
        acc = _acc_dtype(q.dtype)
        self.q = q.view(B, Hk, self.G, L, E)
        self.k = k.unsqueeze(2)
        self.v = v.unsqueeze(2)
        self.acc = acc
        self.mask = mask
        self.alibi = None if alibi is None else alibi.to(acc).view(alibi.shape[0], Hk, self.G, 1, 1)
        self.scale, self.softcap = scale, softcap
        self.left, self.right = window
        self.diag = S - L if bottom_right else 0  # key index on the diagonal of query row 0
        self.dropout = dropout  # None or (p, seed, offset)
        self.batch0, self.rng_dims = batch0, rng_dims  # where this problem sits in the dropout counter space
        self.block_q = self.block_k = _block_size(B * Hq)

    def key_range(self, i0, i1):
        """Keys [lo, hi) that rows [i0, i1) may attend under the causal/window structure."""
        lo = 0 if self.left < 0 else max(0, i0 + self.diag - self.left)
        hi = self.S if self.right < 0 else min(self.S, i1 - 1 + self.diag + self.right + 1)
        return lo, hi

    def key_blocks(self, i0, i1):
        lo, hi = self.key_range(i0, i1)
        start = lo - lo % self.block_k
        return [(j0, min(j0 + self.block_k, hi)) for j0 in range(start, hi, self.block_k)]

    def scores(self, i0, i1, j0, j1):
        """Scores of block (rows i0:i1, keys j0:j1) as (B, Hk, G, bq, bk), -inf where not allowed;
        plus tanh(raw / softcap) for the backward when softcap is on."""
        qb = self.q[:, :, :, i0:i1].to(self.acc)
        kb = self.k[:, :, :, j0:j1].to(self.acc)
        s = _matmul(qb, kb.transpose(-1, -2)) * self.scale
        capped = None
        if self.softcap > 0:
            capped = torch.tanh(s / self.softcap)
            s = capped * self.softcap
        rows = torch.arange(i0, i1, device=s.device).view(-1, 1) + self.diag
        cols = torch.arange(j0, j1, device=s.device).view(1, -1)
        if self.alibi is not None:
            s = s - self.alibi * (rows - cols).abs().to(self.acc)
        if self.mask is not None:
            m = self._mask_block(i0, i1, j0, j1)
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.to(self.acc)
        allowed = torch.ones_like(rows - cols, dtype=torch.bool)
        if self.left >= 0:
            allowed &= cols >= rows - self.left
        if self.right >= 0:
            allowed &= cols <= rows + self.right
        if not bool(allowed.all()):
            s = s.masked_fill(~allowed, float("-inf"))
        return s, capped

    def _mask_block(self, i0, i1, j0, j1):
        m = self.mask
        if isinstance(m, CompactBlockMask):  # a FlexAttention block mask: this block's elements, expanded
            m = block_masks.allowed(*m, i0, i1, j0, j1)
        m = m[:, :, i0:i1] if m.shape[2] > 1 else m
        m = m[..., j0:j1] if m.shape[3] > 1 else m
        Bm, Hm = m.shape[0], m.shape[1]
        return m.reshape(Bm, self.Hk, self.G, *m.shape[2:]) if Hm > 1 else m.unsqueeze(2)

    def keep_scale(self, i0, i1, j0, j1, like):
        """Dropout multiplier for the block (0 or 1/(1-p)), or None without dropout."""
        if self.dropout is None:
            return None
        p, seed, offset = self.dropout
        heads, rows, cols = self.rng_dims
        dev = like.device
        b = torch.arange(self.B, device=dev).view(-1, 1, 1, 1, 1) + self.batch0
        h = torch.arange(self.Hq, device=dev).view(1, self.Hk, self.G, 1, 1)
        i = torch.arange(i0, i1, device=dev).view(1, 1, 1, -1, 1)
        j = torch.arange(j0, j1, device=dev).view(1, 1, 1, 1, -1)
        keep = _keep(seed, offset, p, _counters(offset, heads, rows, cols, b, h, i, j))
        return keep.to(like.dtype) / (1.0 - p)


def _no_keys(shape, dtype, device):
    """Softmax stats (max, sum) of rows that attend nothing."""
    return torch.tensor([float("-inf"), 0.0], dtype=dtype, device=device).repeat(*shape, 1)


def _probabilities(s, row_max, row_sum):
    """exp(s - max) / sum as the forward forms them; 0 in rows that attend nothing."""
    shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max).unsqueeze(-1)
    attended = (row_sum > 0).unsqueeze(-1)
    return torch.where(attended, torch.exp(s - shift) / torch.where(attended, row_sum.unsqueeze(-1), 1), 0)


def _forward_dense(pb, sinks):
    """Returns out (B, Hq, L, Ev) and the softmax stats (B, Hq, L, 2), both in the accumulation dtype; sinks (Hq,)
    or None: one more logit per row, without a value vector."""
    B, Hk, G, L = pb.B, pb.Hk, pb.G, pb.L
    Ev = pb.v.shape[-1]
    out = torch.zeros(B, Hk, G, L, Ev, dtype=pb.acc, device=pb.q.device)
    stats = _no_keys((B, Hk, G, L), pb.acc, pb.q.device)
    sink = None if sinks is None else sinks.to(pb.acc).view(1, Hk, G, 1)
    for i0 in range(0, L, pb.block_q):
        i1 = min(i0 + pb.block_q, L)
        row_max = torch.full((B, Hk, G, i1 - i0), float("-inf"), dtype=pb.acc, device=pb.q.device)
        row_sum = torch.zeros_like(row_max)
        acc = out[:, :, :, i0:i1]
        for j0, j1 in pb.key_blocks(i0, i1):
            s, _ = pb.scores(i0, i1, j0, j1)
            new_max = torch.maximum(row_max, s.amax(-1))
            # Rows that have seen no allowed key yet keep max -inf: shift by 0 instead (exp(-inf) = 0, no NaN).
            shift = torch.where(new_max == float("-inf"), torch.zeros_like(new_max), new_max)
            correction = torch.exp(row_max - shift)
            p = torch.exp(s - shift.unsqueeze(-1))
            row_sum = row_sum * correction + p.sum(-1)
            keep = pb.keep_scale(i0, i1, j0, j1, p)
            if keep is not None:
                p = p * keep
            acc.mul_(correction.unsqueeze(-1)).add_(_matmul(p, pb.v[:, :, :, j0:j1].to(pb.acc)))
            row_max = new_max
        if sinks is not None:  # the sink joins the row's scores last, as one more key block would
            new_max = torch.maximum(row_max, sink)
            correction = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), torch.exp(row_max - new_max))
            row_sum = row_sum * correction + torch.exp(sink - new_max)
            acc.mul_(correction.unsqueeze(-1))
            row_max = new_max
        attended = row_sum > 0
        acc.div_(torch.where(attended, row_sum, torch.ones_like(row_sum)).unsqueeze(-1))
        stats[:, :, :, i0:i1] = torch.where(attended.unsqueeze(-1), torch.stack([row_max, row_sum], -1),
                                            stats[:, :, :, i0:i1])
    return out.view(B, pb.Hq, L, Ev), stats.view(B, pb.Hq, L, 2)


def _backward_dense(pb, grad_out, stats, dmask):
    """Returns dq (B, Hq, L, E), dk (B, Hk, S, E), dv (B, Hk, S, Ev) in the accumulation dtype;
    accumulates the score gradient into dmask (the mask's own shape) when given."""
    B, Hk, G, L, S = pb.B, pb.Hk, pb.G, pb.L, pb.S
    E, Ev = pb.q.shape[-1], pb.v.shape[-1]
    dO = grad_out.to(pb.acc).view(B, Hk, G, L, Ev)
    stats = stats.to(pb.acc).view(B, Hk, G, L, 2)
    dq = torch.zeros(B, Hk, G, L, E, dtype=pb.acc, device=dO.device)
    dk = torch.zeros(B, Hk, S, E, dtype=pb.acc, device=dO.device)
    dv = torch.zeros(B, Hk, S, Ev, dtype=pb.acc, device=dO.device)
    for i0 in range(0, L, pb.block_q):
        i1 = min(i0 + pb.block_q, L)
        qb = pb.q[:, :, :, i0:i1].to(pb.acc)
        dOb = dO[:, :, :, i0:i1]
        row_max, row_sum = stats[:, :, :, i0:i1].unbind(-1)

        def block_terms(j0, j1):
            """Probabilities (without dropout), dropout multiplier, dP (with dropout) and tanh(raw / softcap)."""
            s, capped = pb.scores(i0, i1, j0, j1)
            p = _probabilities(s, row_max, row_sum)
            keep = pb.keep_scale(i0, i1, j0, j1, p)
            dp = torch.einsum("bhgqe,bhke->bhgqk", dOb, pb.v[:, :, 0, j0:j1].to(pb.acc))
            return p, keep, dp if keep is None else dp * keep, capped

        # D = rowsum(P * dP) over every key, from the very probabilities and dP the gradients use: dS then sums
        # to 0 over a row up to rounding, and is exactly 0 where one key takes the whole row (P = 1, D = dP). The
        # FlashAttention form rowsum(dO * O) equals it only up to the roundings of O and of another sum order.
        # D needs every key block before any gradient: the blocks' terms are kept between the two passes when the
        # row reaches at most _KEPT_BLOCKS of them (a window's few), else recomputed, which keeps the extra memory at
        # one block's for rows over long sequences.
        blocks = pb.key_blocks(i0, i1)
        kept = [block_terms(*b) for b in blocks] if len(blocks) <= _KEPT_BLOCKS else None
        terms = lambda: kept if kept is not None else (block_terms(*b) for b in blocks)  # noqa: E731
        delta = torch.zeros_like(row_max)
        for p, _, dp, _ in terms():
            delta += (p * dp).sum(-1)
        for (j0, j1), (p, keep, dp, capped) in zip(blocks, terms()):
            kb = pb.k[:, :, 0, j0:j1].to(pb.acc)
            dv[:, :, j0:j1] += torch.einsum("bhgqk,bhgqe->bhke", p if keep is None else p * keep, dOb)
            ds = p * (dp - delta.unsqueeze(-1))
            if dmask is not None:
                _accumulate_mask_grad(dmask, ds.view(B, pb.Hq, i1 - i0, j1 - j0), i0, i1, j0, j1)
            if capped is not None:
                ds = ds * (1 - capped * capped)
            dq[:, :, :, i0:i1] += torch.einsum("bhgqk,bhke->bhgqe", ds, kb) * pb.scale
            dk[:, :, j0:j1] += torch.einsum("bhgqk,bhgqe->bhke", ds, qb) * pb.scale
    return dq.view(B, pb.Hq, L, E), dk, dv


def _accumulate_mask_grad(dmask, ds, i0, i1, j0, j1):
    """Add the score gradient of a block to a broadcast mask's gradient, summing over its size-1 dims."""
    reduce_dims = [d for d in range(4) if dmask.shape[d] == 1 and ds.shape[d] > 1]
    if reduce_dims:
        ds = ds.sum(reduce_dims, keepdim=True)
    rows = slice(i0, i1) if dmask.shape[2] > 1 else slice(None)
    cols = slice(j0, j1) if dmask.shape[3] > 1 else slice(None)
    dmask[:, :, rows, cols] += ds.to(dmask.dtype)


# ---------------------------------------------------------------------------------------------------------
# The op kernels: split varlen batches into dense problems.

def _problems(q, k, v, mask, alibi, cu_q, cu_k, max_q, max_k, scale, window, bottom_right, softcap,
              dropout_p, dropout_seed):
    """Yields (query rows, key rows, problem) for each dense problem of the canonical arguments (mask: a tensor or a
    CompactBlockMask)."""
    dropout = (dropout_p, *dropout_seed.tolist()) if dropout_p > 0 else None
    Hq = q.shape[1]
    if cu_q is None:
        yield slice(None), slice(None), _Problem(
            q, k, v, mask, alibi, scale, window, bottom_right, softcap, dropout, 0, (Hq, q.shape[2], k.shape[2]))
        return
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(starts_q) - 1):
        rows, keys = slice(starts_q[b], starts_q[b + 1]), slice(starts_k[b], starts_k[b + 1])
        slopes = None if alibi is None else alibi[b:b + 1] if alibi.shape[0] > 1 else alibi
        yield rows, keys, _Problem(q[:, :, rows], k[:, :, keys], v[:, :, keys], None, slopes, scale, window,
                                      bottom_right, softcap, dropout, b, (Hq, max_q, max_k))


def _paged_problems(q, k, v, alibi, cu_q, pages, max_q, max_k, scale, window, bottom_right, softcap):
    """Yields (index of its rows in out, problem) for each sequence of a paged K/V cache, its keys gathered."""
    Hq = q.shape[1]
    starts = None if cu_q is None else cu_q.tolist()
    for b in range(pages.kv_spans.shape[0]):
        rows = (slice(b, b + 1),) if starts is None else (slice(None), slice(None), slice(starts[b], starts[b + 1]))
        slopes = None if alibi is None else alibi[b:b + 1] if alibi.shape[0] > 1 else alibi
        yield rows, _Problem(q[rows], pages.gather(k, b), pages.gather(v, b), None, slopes, scale, window,
                             bottom_right, softcap, None, b, (Hq, max_q, max_k))


def attention_forward(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                      scale, window_left, window_right, bottom_right, softcap, dropout_p, dropout_seed, sinks=None, *,
                      blocks=None, pages=None):
    B, Hq, L, _ = q.shape
    out = torch.zeros(B, Hq, L, v.shape[-1], dtype=q.dtype, device=q.device)
    stats = _no_keys((B, Hq, L), stats_dtype(q.dtype), q.device)
    if pages is not None:
        for rows, pb in _paged_problems(q, k, v, alibi_slopes, cu_seqlens_q, pages, max_seqlen_q, max_seqlen_k, scale,
                                        (window_left, window_right), bottom_right, softcap):
            o, row_stats = _forward_dense(pb, sinks)
            out[rows] = o.to(q.dtype)
            stats[rows] = row_stats
        return out, stats
    for rows, _, pb in _problems(q, k, v, mask if blocks is None else blocks, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, scale, (window_left, window_right), bottom_right, softcap,
                                    dropout_p, dropout_seed):
        o, row_stats = _forward_dense(pb, sinks)
        out[:, :, rows] = o.to(q.dtype)
        stats[:, :, rows] = row_stats
    return out, stats


def attention_backward(grad_out, q, k, v, out, stats, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                       max_seqlen_q, max_seqlen_k, scale, window_left, window_right, bottom_right, softcap,
                       dropout_p, dropout_seed, mask_grad, *, blocks=None):
    acc = _acc_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    dmask = torch.zeros(mask.shape, dtype=acc, device=q.device) if mask_grad else None
    for rows, keys, pb in _problems(q, k, v, mask if blocks is None else blocks, alibi_slopes, cu_seqlens_q,
                                       cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, (window_left, window_right),
                                       bottom_right, softcap, dropout_p, dropout_seed):
        gq, gk, gv = _backward_dense(pb, grad_out[:, :, rows], stats[:, :, rows], dmask)
        dq[:, :, rows] = gq
        dk[:, :, keys] = gk
        dv[:, :, keys] = gv
    dmask = dmask.to(mask.dtype) if mask_grad else q.new_empty(0)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dmask


def attention_probabilities(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            scale, window_left, window_right, bottom_right, softcap, dropout_p, dropout_seed, stats):
    """The probabilities exp(s - m) / l of a forward that returned these softmax stats, with the ones its dropout
    dropped negated (FlashAttention's S_dmask): (B, Hq, L, S), or for varlen calls (sequences, Hq, max_seqlen_q,
    max_seqlen_k) with each sequence in the top-left corner and 0 elsewhere. Materialises every score."""
    B, Hq, L, _ = q.shape
    varlen = cu_seqlens_q is not None
    shape = (cu_seqlens_q.shape[0] - 1, Hq, max_seqlen_q, max_seqlen_k) if varlen else (B, Hq, L, k.shape[2])
    result = torch.zeros(shape, dtype=_acc_dtype(q.dtype), device=q.device)
    problems = _problems(q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                         (window_left, window_right), bottom_right, softcap, dropout_p, dropout_seed)
    for index, (rows, _, pb) in enumerate(problems):
        s, _ = pb.scores(0, pb.L, 0, pb.S)
        row_max, row_sum = stats[:, :, rows].to(pb.acc).view(pb.B, pb.Hk, pb.G, pb.L, 2).unbind(-1)
        p = _probabilities(s, row_max, row_sum)
        keep = pb.keep_scale(0, pb.L, 0, pb.S, p)
        p = (p if keep is None else torch.where(keep > 0, p, -p)).view(pb.B, Hq, pb.L, pb.S)
        result[index:index + 1 if varlen else B, :, :pb.L, :pb.S] = p
    return result


def gemm(a, b, bias):
    out = _matmul(a, b)
    return out + bias if bias is not None else out
