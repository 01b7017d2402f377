// The register estimate of the emulator's profile builds (mfa_torch/emulator/counters.py: an allowance of 24 for
// scalars and pointers, plus 2 per float and 1 per 16-bit 8x8 tile alive at once) for the tiles of each attention
// kernel, so the planners choose which operands stay in registers. tests/test_kernel_registers.py compares it with
// the emulator's count of every kind of variant.
#pragma once

#include <cstdint>
#include <utility>

namespace mfa {

constexpr uint32_t kRegisterAllowance = 24;
constexpr uint32_t kRegisterLimit = 128;  // past it a kernel spills (facts/apple-gpu-performance.md)

// The tile shapes a kernel's registers depend on: head dims padded to 8, the operand tiles' type and the key block.
struct AttentionTileShape {
  uint32_t head_dim = 0, value_dim = 0;
  uint32_t operand_registers = 1;  // per operand tile: 1 for 16-bit tiles, 2 for float (float32, bfloat before Apple9)
  uint32_t held_registers = 1;     // per tile held in the input type: 1 for 16-bit inputs, 2 for float32
  bool widened_bfloat = false;     // bfloat operands widened to float where they are loaded or used
  uint32_t block_k = 0;            // keys (forward, dQ) or queries (dK/dV) per block: its score tiles
};

// attention_forward with Q held (or streamed), `out_dim` columns of O per SIMD-group (MFA_SLICE_DIM): with two
// slices, each multiplies half of Q's tiles for all shape.block_k keys of a block, scores half of them and loads P's
// tiles from threadgroup memory.
uint32_t forward_registers(const AttentionTileShape& shape, bool stream_q, uint32_t out_dim);
// A sliced forward's (out_dim, stream_q): two slices of O (so that each staged K and V tile serves the 4 row groups of
// the 8 SIMD-groups), with Q held where that fits, else streamed.
std::pair<uint32_t, bool> forward_slices(const AttentionTileShape& shape);
// Whether `slices` column slices of an accumulator can share a block of `key_tiles` score tiles: 2 to 4 slices (so at
// least two row groups of a threadgroup's 8 SIMD-groups share each staged tile), each scoring whole tiles.
bool shares_key_tiles(uint32_t slices, uint32_t key_tiles);
// attention_backward_dq with Q and dO held or streamed, `dq_dim` columns of dQ per SIMD-group: with two slices, each
// multiplies half of Q's and dO's tiles for all shape.block_k keys of a block, computes S and dP for half of them and
// loads dS's tiles from threadgroup memory; a single slice computes one key tile at a time.
uint32_t dq_registers(const AttentionTileShape& shape, bool stream_q, bool stream_do, uint32_t dq_dim);
struct DqSlices {
  uint32_t dq_dim;
  bool stream_q, stream_do;
};
// A sliced dQ's slices: two, with Q and dO held while they fit (the one of the larger head dim streamed first).
DqSlices dq_slices(const AttentionTileShape& shape);
// attention_backward_dkdv with K and V held or streamed, dK and dV each cut into `slices` column slices
// (slice_width), a SIMD-group each: with more than one, each computes S^T and dP^T for shape.block_k / slices queries
// of a block and loads P^T's and dS^T's tiles from threadgroup memory; a single slice computes one query tile at a
// time.
uint32_t dkdv_registers(const AttentionTileShape& shape, bool stream_k, bool stream_v, uint32_t slices);
// The columns of each of `slices` slices of an accumulator of `dim` columns: whole tiles, the last slices may hold
// fewer or none.
uint32_t slice_width(uint32_t dim, uint32_t slices);
struct DkDvSlices {
  uint32_t slices;
  bool stream_k, stream_v;
};
// A sliced dK/dV's slices: the fewest within the limit (2 to 4, a count that divides the block's query tiles: fewer
// slices share each staged Q and dO tile among more keys, which saves more than holding K or V), with K and V held
// while they fit (the one of the larger head dim streamed first).
DkDvSlices dkdv_slices(const AttentionTileShape& shape);

}  // namespace mfa
