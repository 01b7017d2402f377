"""FlexAttention block masks in the compact form the attention ops take (mask_blocks, mask_bits, mask_block_size):
one int32 state per mask block of each (batch, head), and the mask_mod's values of the partial blocks only, one bit
per element. The partial blocks' values are computed with torch ops over those blocks alone, a bounded number of
elements at a time: never an L x S tensor.

States: EMPTY (no element attends: the kernels never load the block), FULL (every element attends: computed with no
per-element mask), or the block's slot in the bits (>= 0). Bits: int32 (partial blocks, block_q, words), bit c % 32
of word c // 32 of row r saying whether the block's element (r, c) attends.

The dK/dV kernel walks a key block's query blocks from q-side lists (query_lists: what a BlockMask's q_num_blocks /
q_indices and full_q_num_blocks / full_q_indices hold together), derived from the states.
"""
from typing import NamedTuple

import torch

from ._validation import require

EMPTY, FULL = -1, -2
_ELEMENTS_PER_STEP = 1 << 22  # mask_mod values computed at once


class CompactBlockMask(NamedTuple):
    states: torch.Tensor  # int32 (1 or B, 1 or Hq, ceil(L / block_q), ceil(S / block_k))
    bits: torch.Tensor    # int32 (partial blocks, block_q, ceil(block_k / 32))
    block_size: tuple     # (block_q, block_k)

    def op_args(self):
        return self.states, self.bits, list(self.block_size)


def _listed(num_blocks, indices, columns):
    """Bool (..., columns): the blocks the first num_blocks[...] entries of indices name."""
    valid = torch.arange(indices.shape[-1], device=indices.device) < num_blocks.unsqueeze(-1)
    target = torch.where(valid, indices.long().clamp(0, columns - 1), columns)  # unlisted entries: a spare column
    counts = torch.zeros(*indices.shape[:-1], columns + 1, dtype=torch.int32, device=indices.device)
    return counts.scatter_add_(-1, target, valid.int())[..., :columns] > 0


def _pack_bits(allowed):
    """Bool (n, rows, cols) -> int32 (n, rows, ceil(cols / 32)), bit c % 32 of word c // 32."""
    n, rows, cols = allowed.shape
    words = -(-cols // 32)
    padded = torch.zeros(n, rows, words * 32, dtype=torch.int64, device=allowed.device)
    padded[..., :cols] = allowed.long()
    value = (padded.view(n, rows, words, 32) << torch.arange(32, device=allowed.device)).sum(-1)
    return torch.where(value >= 2 ** 31, value - 2 ** 32, value).to(torch.int32)  # the same 32 bits, signed


def _block_mask_attrs(block_mask):
    names = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "BLOCK_SIZE", "mask_mod",
             "seq_lengths")
    require(all(hasattr(block_mask, n) for n in names),
            f"block_mask must be a torch.nn.attention.flex_attention.BlockMask (create_block_mask), got "
            f"{type(block_mask).__name__}", TypeError)
    return (getattr(block_mask, n) for n in names)


def compact(block_mask, batch, heads, L, S, device):
    """The CompactBlockMask of a BlockMask for a call with (batch, heads) query heads, L queries and S keys."""
    kv_num, kv_idx, full_num, full_idx, block_size, mask_mod, lengths = _block_mask_attrs(block_mask)
    block_q, block_k = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    require(tuple(lengths) == (L, S), f"block_mask was built for (Q_LEN, KV_LEN) = {tuple(lengths)}, but the call "
                                      f"has {L} queries and {S} keys: build it with create_block_mask(..., {L}, {S})")
    Bm, Hm, QB = kv_num.shape
    require(Bm in (1, batch) and Hm in (1, heads),
            f"block_mask has (B, H) = ({Bm}, {Hm}); the call needs 1 or {batch} and 1 or {heads}")
    require(QB == -(-L // block_q), f"block_mask has {QB} query blocks, expected ceil({L} / {block_q})")
    KB = -(-S // block_k)
    kv_num, kv_idx = kv_num.to(device), kv_idx.to(device)
    partial = _listed(kv_num, kv_idx, KB)
    full = torch.zeros_like(partial) if full_num is None else _listed(full_num.to(device), full_idx.to(device), KB)
    partial &= ~full
    states = torch.full(partial.shape, EMPTY, dtype=torch.int32, device=device)
    states[full] = FULL
    where = partial.nonzero()  # (n, 4): batch, head, query block, key block, in slot order
    states[partial] = torch.arange(where.shape[0], dtype=torch.int32, device=device)
    rows = torch.arange(block_q, device=device).view(1, -1, 1)
    cols = torch.arange(block_k, device=device).view(1, 1, -1)
    pieces = []
    step = max(1, _ELEMENTS_PER_STEP // (block_q * block_k))
    for chunk in where.split(step):
        b, h, qb, kb = (chunk[:, i].view(-1, 1, 1) for i in range(4))
        q_idx, kv_idx = qb * block_q + rows, kb * block_k + cols
        inside = (q_idx < L) & (kv_idx < S)
        values = mask_mod(b, h, q_idx.clamp(max=L - 1), kv_idx.clamp(max=S - 1))  # padding: computed, never used
        pieces.append(_pack_bits(torch.as_tensor(values, device=device).bool().expand(inside.shape) & inside))
    bits = torch.cat(pieces) if pieces else torch.zeros(0, block_q, -(-block_k // 32), dtype=torch.int32,
                                                           device=device)
    return CompactBlockMask(states, bits, (block_q, block_k))


def query_lists(states):
    """Int32 (Bm, Hm, key blocks, 1 + query blocks): for each key block of each (batch, head), the number of query
    blocks whose state is not EMPTY, then those query blocks in ascending order (the rest of the row is 0)."""
    listed = (states != EMPTY).transpose(2, 3)  # (Bm, Hm, key blocks, query blocks)
    query_blocks = listed.shape[-1]
    slot = torch.where(listed, listed.int().cumsum(-1) - 1, query_blocks)  # unlisted blocks: a spare column
    index = torch.arange(query_blocks, dtype=torch.int32, device=states.device).expand(listed.shape)
    rows = torch.zeros(*listed.shape[:-1], query_blocks + 1, dtype=torch.int32, device=states.device)
    rows.scatter_(-1, slot.long(), index)
    return torch.cat([listed.sum(-1, dtype=torch.int32).unsqueeze(-1), rows[..., :query_blocks]], -1).contiguous()


def allowed(states, bits, block_size, i0, i1, j0, j1):
    """Bool (Bm, Hm, i1 - i0, j1 - j0): which queries [i0, i1) may attend which keys [j0, j1)."""
    block_q, block_k = block_size
    device = states.device
    i, j = torch.arange(i0, i1, device=device), torch.arange(j0, j1, device=device)
    state = states[:, :, i // block_q][:, :, :, j // block_k]
    col = j % block_k
    word = bits[state.clamp(min=0).long(), (i % block_q).view(-1, 1), (col // 32).view(1, -1)] if bits.numel() \
        else torch.zeros_like(state)
    bit = (word >> (col % 32).to(torch.int32)) & 1
    return (state == FULL) | ((state >= 0) & (bit == 1))
