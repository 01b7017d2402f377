// Why these sizes (facts/metal.md): the K/V tile is staged as float, so block_k x dim x 4 bytes stays at 16 KiB for
// every row, half of the 32 KiB of threadgroup memory, leaving room for two threadgroups per core. M1/M2 (Apple7/8)
// favour 4 SIMD-groups of 8 rows sharing each tile, as MLX's fused attention does; on M3 and later (Apple9+)
// registers are the scarcer resource and loads are cheap, so MFA's M3 tables use 16 query rows and long key blocks
// for small head dims.
// The backward stages a K and a V tile (dQ) or a Q and a dO tile (dK/dV) together, again 16 KiB of float, so the tile
// length halves as E + Ev doubles. Until a Mac measures otherwise, every family shares the backward table.
#include "attention/block_table.h"

namespace mfa {
namespace {

struct Row {
  uint32_t max_dim;
  AttentionBlocks blocks;
};

constexpr Row kApple7[] = {{64, {32, 64}}, {128, {32, 32}}, {256, {32, 16}}};
constexpr Row kApple9[] = {{32, {16, 128}}, {64, {16, 64}}, {128, {32, 32}}, {256, {16, 16}}};

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

AttentionBlocks attention_forward_blocks(GpuFamily family, uint32_t dim) {
  return has_dynamic_caching(family) ? lookup(kApple9, dim) : lookup(kApple7, dim);
}

}  // namespace mfa
