// Why these sizes (facts/metal.md): the forward stages its K/V tile in the input type, block_k x dim elements (or K
// in chunks of its head dim and V in runs of keys: staged_k_chunks, staged_v_rows), at most kForwardTileBytes (half
// of the 32 KiB of threadgroup memory: room for two threadgroups per core). The rows are for 16-bit inputs; float
// inputs take as many keys as fit. Threadgroup traffic per 8x8x8 product of a 16-bit tile is 128 bytes of tile loads
// plus 128 / SIMD-groups of staging; each key block costs every row one rescaling exp (tests/test_kernel_targets.py
// checks both against their targets).
// The backward stages a K and a V tile (dQ) or a Q and a dO tile (dK/dV) together in the input type, at most 16 KiB
// (8 KiB for 16-bit inputs), so the tile length halves as E + Ev doubles. Until a Mac measures otherwise, every family
// shares the backward table.
#include "attention/block_table.h"

namespace mfa {
namespace {

struct Row {
  uint32_t max_dim;
  AttentionBlocks blocks;
};

constexpr Row kApple7[] = {
    {64, {32, 128}},  // 4 SIMD-groups share each staged tile (MLX's fused attention); 128 keys a 16 KiB tile
    {128, {32, 64}},  // the same 16 KiB tile
    {256, {32, 32}},  // the same 16 KiB tile
};
constexpr Row kApple9[] = {
    {32, {16, 128}},  // MFA's M3 table: 16 query rows, a long key block
    {64, {32, 128}},  // as on Apple7: 4 SIMD-groups amortise the staging
    {128, {32, 64}},  // as on Apple7
    {256, {16, 32}},  // registers are the scarcer resource on M3 (MFA): 16 query rows
};
constexpr uint32_t kForwardTileBytes = 16 * 1024;

template <size_t N>
AttentionBlocks lookup(const Row (&table)[N], uint32_t dim) {
  for (const Row& row : table) {
    if (dim <= row.max_dim) return row.blocks;
  }
  return table[N - 1].blocks;
}

constexpr struct {
  uint32_t max_dims;
  AttentionBackwardBlocks blocks;
} kBackward[] = {{128, {32, 32, 32, 32}}, {256, {32, 16, 32, 16}}, {512, {16, 8, 16, 8}}};

}  // namespace

AttentionBackwardBlocks attention_backward_blocks(GpuFamily, uint32_t dims) {
  for (const auto& row : kBackward) {
    if (dims <= row.max_dims) return row.blocks;
  }
  return kBackward[2].blocks;
}

// Sliced O, dQ or dK/dV (large head dims): 8 SIMD-groups (256 threads) share the staged tiles; 64 keys (dK/dV:
// queries) a block, so each forward row's rescaling exp (once per slice) is spread over enough scores (<= 1 + 4 x
// slices / 64 per score).
AttentionBlocks attention_sliced_blocks(GpuFamily) { return {64, 64}; }

uint32_t staged_chunks(uint32_t dim, uint32_t rows, uint32_t element_bytes, uint32_t budget_bytes) {
  uint32_t chunks = 1;
  while (staged_k_chunk_width(dim, chunks) > 8 &&
         uint64_t(rows) * staged_k_chunk_width(dim, chunks) * element_bytes > budget_bytes) {
    chunks++;
  }
  return chunks;
}

uint32_t staged_k_chunks(uint32_t head_dim, uint32_t block_k, uint32_t element_bytes) {
  return staged_chunks(head_dim, block_k, element_bytes, kForwardTileBytes);
}

uint32_t staged_k_chunk_width(uint32_t head_dim, uint32_t chunks) {
  return (head_dim + 8 * chunks - 1) / (8 * chunks) * 8;
}

uint32_t staged_v_rows(uint32_t value_dim, uint32_t block_k, uint32_t element_bytes) {
  for (uint32_t rows = block_k; rows > 8; rows -= 8) {
    if (block_k % rows == 0 && rows * value_dim * element_bytes <= kForwardTileBytes) return rows;
  }
  return 8;
}

AttentionBlocks attention_forward_blocks(GpuFamily family, uint32_t dim, uint32_t element_bytes) {
  AttentionBlocks blocks = has_dynamic_caching(family) ? lookup(kApple9, dim) : lookup(kApple7, dim);
  while (blocks.block_k > 8 && blocks.block_k * dim * element_bytes > kForwardTileBytes) blocks.block_k /= 2;
  return blocks;
}

}  // namespace mfa
