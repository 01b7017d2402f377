"""Every work formula the benchmark reports, in one place.

Throughput follows two conventions so numbers compare with both literatures:
  FLOPs (FlashAttention's benchmarks): a multiply-add is 2 FLOPs;
  instructions (metal-flash-attention's README, "GINSTRS"): a multiply-add is 1 instruction, plus the softmax's
  per-score work, counted per head and per batch element. GINSTRS = instructions / 1e9.
Causal attention computes about half of the L x S scores, so both counts are halved for it (as FlashAttention's
benchmarks do); a number for causal attention is therefore "useful work per second".
Tile counts are the work the Metal kernels' debug counter (MFA_COUNT_TILES) measures under the emulator.
"""
import math


def _causal_fraction(causal):
    return 0.5 if causal else 1.0


def attention_forward_flops(batch, heads, L, S, D, causal):
    """4*L*S*D FLOPs per (batch, query head): S = QK^T and O = PV are two L x S x D matmuls of 2 FLOPs per
    multiply-add. Halved for causal. GQA does not change it: every query head does the full work."""
    return 4 * L * S * D * batch * heads * _causal_fraction(causal)


def attention_backward_flops(batch, heads, L, S, D, causal):
    """2.5x the forward (the usual convention: the backward runs five L x S x D matmuls to the forward's two)."""
    return 2.5 * attention_forward_flops(batch, heads, L, S, D, causal)


def attention_forward_instructions(batch, heads, L, S, D, causal):
    """metal-flash-attention's count for the forward: (2D + 5) * N^2 per head (N = L = S there; L * S here).
    2D multiply-adds per score (QK^T and PV) and 5 for the softmax. Halved for causal."""
    return (2 * D + 5) * L * S * batch * heads * _causal_fraction(causal)


def attention_backward_instructions(batch, heads, L, S, D, causal):
    """metal-flash-attention's count for the backward: (3D + 5) * N^2 for the dQ pass plus (4D + 5) * N^2 for the
    dK/dV pass, per head (N^2 = L * S here). Halved for causal."""
    return ((3 * D + 5) + (4 * D + 5)) * L * S * batch * heads * _causal_fraction(causal)


def gemm_flops(M, N, K):
    """2*M*N*K: one multiply-add (2 FLOPs) per (row, column, inner index)."""
    return 2 * M * N * K


def row_block_last_queries(L, group, block_rows):
    """For each block of `block_rows` threadgroup rows, the last query its rows cover. With GQA the kernels pack the
    `group` query heads that share a K/V head into the rows: row r is query r // group."""
    rows = L * group
    return [(min(r0 + block_rows, rows) - 1) // group for r0 in range(0, rows, block_rows)]


def key_blocks(S, block_k):
    return math.ceil(S / block_k)


def minimum_tiles(last_queries, S, block_k, causal):
    """Key blocks of `block_k` keys that blocks of queries (given by their last query) must compute. Upper-left
    causal: query i sees keys 0..i, so a block whose last query is q needs the key blocks starting at or before q;
    without a mask, every key block."""
    if not causal:
        return dense_tiles(last_queries, S, block_k)
    return sum(min(key_blocks(S, block_k), q // block_k + 1) for q in last_queries)


def dense_tiles(last_queries, S, block_k):
    """Every (query block, key block) pair: the work with no tile skipping."""
    return len(last_queries) * key_blocks(S, block_k)
