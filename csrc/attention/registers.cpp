// Each estimate is the kernel's peak: the tiles held through its loops plus the largest set alive at one point of a
// loop body (shaders/attention_*.metal and operand_tiles.h, in the order they declare them).
#include "attention/registers.h"

#include <algorithm>
#include <stdexcept>

namespace mfa {
namespace {

constexpr uint32_t kFloatTile = 2;

uint32_t tiles(uint32_t dim) { return dim / 8; }

// Registers of a row operand's tiles held through the loops (in the input type), and at one use: a streamed tile, or
// a held bfloat tile widened to float.
uint32_t held(const AttentionTileShape& s, uint32_t dim, bool streamed) { return streamed ? 0 : tiles(dim) * s.held_registers; }
uint32_t in_use(const AttentionTileShape& s, bool streamed) {
  return streamed ? s.operand_registers : s.widened_bfloat ? kFloatTile : 0;
}

}  // namespace

uint32_t forward_registers(const AttentionTileShape& s, bool stream_q, uint32_t out_dim) {
  const uint32_t slices = (s.value_dim + out_dim - 1) / out_dim;
  // Q (sliced: the slice's alternate tiles), O, and the block's score tiles (sliced: partial scores of every key)
  const uint32_t held_tiles = (stream_q ? 0 : (tiles(s.head_dim) + slices - 1) / slices * s.held_registers) +
                              tiles(out_dim) * kFloatTile + tiles(s.block_k) * kFloatTile;
  // Zeroing the score tiles (make_filled_simdgroup_matrix's tile); Q K^T: a Q tile in use and a K tile; sliced, the
  // other slice's partial scores loaded; P V: a V tile (and, sliced, the P tile loaded).
  const uint32_t pv = (slices > 1 ? kFloatTile : 0) + s.operand_registers;
  const uint32_t body = std::max({kFloatTile, in_use(s, stream_q) + s.operand_registers, pv});
  return kRegisterAllowance + held_tiles + body;
}

bool shares_key_tiles(uint32_t slices, uint32_t key_tiles) {
  return slices > 1 && slices <= 4 && key_tiles % slices == 0;
}

std::pair<uint32_t, bool> forward_slices(const AttentionTileShape& s) {
  const uint32_t width = slice_width(s.value_dim, 2);
  if (shares_key_tiles(2, tiles(s.block_k)) && forward_registers(s, true, width) <= kRegisterLimit) {
    return {width, forward_registers(s, false, width) > kRegisterLimit};
  }
  // 2 slices of O with Q streamed fit every head dim (tests/test_kernel_registers.py checks every plan)
  throw std::logic_error("attention forward: no column slicing of O fits the register limit");
}

uint32_t dq_registers(const AttentionTileShape& s, bool stream_q, bool stream_do, uint32_t dq_dim) {
  const uint32_t slices = (s.head_dim + dq_dim - 1) / dq_dim;
  // Unsliced: a score and a dP tile. Sliced: dP's own key tiles, with the partial dP (later S) of every key tile.
  const uint32_t score_tiles = slices > 1 ? tiles(s.block_k) / slices + tiles(s.block_k) : 2;
  // Q and dO (sliced: the slice's alternate tiles), dQ, the score tiles
  const uint32_t held_tiles = (stream_q ? 0 : (tiles(s.head_dim) + slices - 1) / slices * s.held_registers) +
                              (stream_do ? 0 : (tiles(s.value_dim) + slices - 1) / slices * s.held_registers) +
                              tiles(dq_dim) * kFloatTile + score_tiles * kFloatTile;
  // S = Q K^T and dP = dO V^T: a Q or dO tile in use and a K or V tile; dQ += dS K: a K tile (and, sliced, the dS
  // tile loaded, or the other slice's partial products).
  const uint32_t ds = (slices > 1 ? kFloatTile : 0) + s.operand_registers;
  const uint32_t body = std::max(std::max(in_use(s, stream_q), in_use(s, stream_do)) + s.operand_registers, ds);
  return kRegisterAllowance + held_tiles + body;
}

DqSlices dq_slices(const AttentionTileShape& s) {
  const bool q_larger = s.head_dim >= s.value_dim;
  const uint32_t width = slice_width(s.head_dim, 2);
  for (const std::pair<bool, bool>& streamed :
       {std::pair{false, false}, std::pair{q_larger, !q_larger}, std::pair{true, true}}) {
    if (shares_key_tiles(2, tiles(s.block_k)) &&
        dq_registers(s, streamed.first, streamed.second, width) <= kRegisterLimit) {
      return {width, streamed.first, streamed.second};
    }
  }
  // 2 slices of dQ with Q and dO streamed fit every head dim (tests/test_kernel_registers.py checks every plan)
  throw std::logic_error("attention backward: no column slicing of dQ fits the register limit");
}

uint32_t slice_width(uint32_t dim, uint32_t slices) { return (dim + 8 * slices - 1) / (8 * slices) * 8; }

uint32_t dkdv_registers(const AttentionTileShape& s, bool stream_k, bool stream_v, uint32_t slices) {
  const uint32_t score_tiles = slices > 1 ? tiles(s.block_k) / slices : 1;
  const uint32_t held_tiles = held(s, s.head_dim, stream_k) + held(s, s.value_dim, stream_v) +
                              (tiles(slice_width(s.head_dim, slices)) + tiles(slice_width(s.value_dim, slices))) *
                                  kFloatTile +
                              (slices > 1 ? 3 : 1) * score_tiles * kFloatTile;  // K, V, dK, dV, S^T (sliced: P^T, dP^T)
  // S^T = K Q^T: a K tile in use and a Q tile; dP^T = V dO^T: (unsliced, the dP tile) a V tile in use and a dO tile;
  // the dV and dK products: one staged tile (and, sliced, the P^T or dS^T tile loaded, or P^T * dropout stored).
  const uint32_t scores = in_use(s, stream_k) + s.operand_registers;
  const uint32_t dp = (slices > 1 ? 0 : kFloatTile) + in_use(s, stream_v) + s.operand_registers;
  const uint32_t products = (slices > 1 ? kFloatTile : 0) + s.operand_registers;
  return kRegisterAllowance + held_tiles + std::max({scores, dp, products});
}

DkDvSlices dkdv_slices(const AttentionTileShape& s) {
  const bool k_larger = s.head_dim >= s.value_dim;
  for (uint32_t slices = 2; slices <= 4; slices++) {
    for (const std::pair<bool, bool>& streamed :
         {std::pair{false, false}, std::pair{k_larger, !k_larger}, std::pair{true, true}}) {
      if (shares_key_tiles(slices, tiles(s.block_k)) &&
          dkdv_registers(s, streamed.first, streamed.second, slices) <= kRegisterLimit) {
        return {slices, streamed.first, streamed.second};
      }
    }
  }
  // 4 slices with K and V streamed fit every head dim (tests/test_kernel_registers.py checks every plan)
  throw std::logic_error("attention backward: no column slicing of dK and dV fits the register limit");
}

}  // namespace mfa
