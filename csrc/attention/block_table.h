// Block sizes of the attention forward per GPU family and head dim: data, not code (DESIGN section 8).
#pragma once

#include <cstdint>

#include "gpu_family.h"

namespace mfa {

struct AttentionBlocks {
  uint32_t block_q;  // packed query rows per threadgroup: 8 per SIMD-group
  uint32_t block_k;  // keys per K/V tile staged in threadgroup memory
};

// `dim`: the larger of the padded query/key and value head dims (multiples of 8, at most 256); `element_bytes`: of
// the inputs (4 or 2), the type the K/V tile is staged in.
AttentionBlocks attention_forward_blocks(GpuFamily family, uint32_t dim, uint32_t element_bytes);

// The blocks of a kernel whose accumulator (O, dQ, or dK and dV) is cut into column slices, one SIMD-group each:
// block_q is 8 x the SIMD-groups (rows, or keys for dK/dV, x slices), block_k the keys (queries) that the slices
// of a row group share.
AttentionBlocks attention_sliced_blocks(GpuFamily family);

// The forward stages K in chunks of its (padded) head dim and V in runs of keys, each at most kForwardTileBytes of
// `element_bytes` elements: the fewest chunks of whole tiles (the last may be narrower), each
// staged_k_chunk_width(head_dim, chunks) columns (MFA_K_CHUNKS and attention_forward.metal's K_CHUNK), and the
// longest run of whole key tiles that divides `block_k` (rows of `value_dim` elements).
uint32_t staged_k_chunks(uint32_t head_dim, uint32_t block_k, uint32_t element_bytes);
uint32_t staged_k_chunk_width(uint32_t head_dim, uint32_t chunks);
uint32_t staged_v_rows(uint32_t value_dim, uint32_t block_k, uint32_t element_bytes);

// The fewest chunks of whole tiles of `dim` columns whose `rows` x width elements fit in `budget_bytes` (chunks of
// one tile if none do).
uint32_t staged_chunks(uint32_t dim, uint32_t rows, uint32_t element_bytes, uint32_t budget_bytes);
// The sliced dK/dV kernel stages Q and dO in chunks beside its block of float scores and the queries' stats, all
// within this: two threadgroups still fit a core's ~60 KB (facts/apple-gpu-performance.md), and its registers
// (~100 a thread) allow no more than two anyway. Wider chunks than the forward's mean fewer barriers per block.
constexpr uint32_t kDkDvThreadgroupBytes = 30000;

struct AttentionBackwardBlocks {
  uint32_t dq_block_q;     // dQ kernel: packed query rows per threadgroup (8 per SIMD-group)
  uint32_t dq_block_k;     // dQ kernel: keys per K and V tile
  uint32_t dkdv_block_kv;  // dK/dV kernel: keys per threadgroup (8 per SIMD-group)
  uint32_t dkdv_block_q;   // dK/dV kernel: queries per Q and dO tile
};

// `dims`: padded query/key head dim + padded value head dim (the backward stages both kinds of tile at once).
AttentionBackwardBlocks attention_backward_blocks(GpuFamily family, uint32_t dims);

// Key splits (flash-decoding) are added while the grid has fewer threadgroups than this.
constexpr uint32_t kAttentionTargetThreadgroups = 128;
// A split covers at least this many key blocks, so the combine pass stays cheap next to the splits.
constexpr uint32_t kAttentionMinBlocksPerSplit = 4;

}  // namespace mfa
