"""Paged K/V caches in the ops' canonical form (csrc/ops.cpp): k and v are pools of pages (P, Hk, page_size, D),
and each sequence finds its keys through a block table. Key j of sequence b is cache position
c = kv_spans[b, 0] + j (j < kv_spans[b, 1]), at row c % page_size of page block_table[b, c // page_size]. A
contiguous (batch, capacity, Hk, D) cache is the same with one page per sequence."""
from typing import NamedTuple

import torch


class PagedKV(NamedTuple):
    block_table: torch.Tensor  # (sequences, max_pages) int32
    kv_spans: torch.Tensor     # (sequences, 2) int32: first cache position, key count

    def op_args(self):
        return self.block_table, self.kv_spans

    def gather(self, pool, sequence):
        """The keys (or values) of one sequence, (1, Hk, count, D): the reference route's copy of them."""
        page_size = pool.shape[2]
        first, count = self.kv_spans[sequence].tolist()
        positions = torch.arange(first, first + count, device=pool.device)
        pages = self.block_table[sequence].long()[positions // page_size]
        return pool[pages, :, positions % page_size].permute(1, 0, 2).unsqueeze(0)
