// Each estimate is the kernel's peak: the tiles held through its loops plus the largest set alive at one point of a
// loop body (shaders/attention_*.metal and operand_tiles.h, in the order they declare them).
#include "attention/registers.h"

#include <algorithm>
#include <stdexcept>

#include "attention_params.h"

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
  const uint32_t held_tiles = held(s, s.head_dim, stream_q) + tiles(out_dim) * kFloatTile +
                              tiles(s.block_k) / slices * kFloatTile;  // Q, O, the slice's scores
  // Zeroing the score tiles (make_filled_simdgroup_matrix's tile); Q K^T: a Q tile in use and a K tile; P V: a V
  // tile (and, sliced, the P tile loaded).
  const uint32_t pv = (slices > 1 ? kFloatTile : 0) + s.operand_registers;
  const uint32_t body = std::max({kFloatTile, in_use(s, stream_q) + s.operand_registers, pv});
  return kRegisterAllowance + held_tiles + body;
}

bool shares_key_tiles(uint32_t dim, uint32_t width, uint32_t key_tiles) {
  const uint32_t slices = (dim + width - 1) / width;
  return slices > 1 && slices <= 4 && key_tiles % slices == 0;
}

std::pair<uint32_t, bool> forward_slices(const AttentionTileShape& s) {
  for (const bool stream_q : {false, true}) {
    const auto fits = [&](uint32_t width) {
      return shares_key_tiles(s.value_dim, width, tiles(s.block_k)) &&
             forward_registers(s, stream_q, width) <= kRegisterLimit;
    };
    const uint32_t width = widest_fitting_slice(s.value_dim, fits);
    if (fits(width)) return {width, stream_q};
  }
  // 4 slices of O with Q streamed fit every head dim (tests/test_kernel_registers.py checks every plan)
  throw std::logic_error("attention forward: no column slicing of O fits the register limit");
}

uint32_t dq_registers(const AttentionTileShape& s, bool stream_q, bool stream_do, uint32_t dq_dim) {
  const uint32_t slices = (s.head_dim + dq_dim - 1) / dq_dim;
  const uint32_t score_tiles = slices > 1 ? tiles(s.block_k) / slices : 1;
  const uint32_t held_tiles = held(s, s.head_dim, stream_q) + held(s, s.value_dim, stream_do) +
                              tiles(dq_dim) * kFloatTile +
                              2 * score_tiles * kFloatTile;  // Q, dO, dQ, the score and dP tiles
  // S = Q K^T and dP = dO V^T: a Q or dO tile in use and a K or V tile; dQ += dS K: a K tile (and, sliced, the dS
  // tile loaded).
  const uint32_t ds = (slices > 1 ? kFloatTile : 0) + s.operand_registers;
  const uint32_t body = std::max(std::max(in_use(s, stream_q), in_use(s, stream_do)) + s.operand_registers, ds);
  return kRegisterAllowance + held_tiles + body;
}

DqSlices dq_slices(const AttentionTileShape& s) {
  const bool q_larger = s.head_dim >= s.value_dim;
  for (const std::pair<bool, bool>& streamed :
       {std::pair{false, false}, std::pair{q_larger, !q_larger}, std::pair{true, true}}) {
    const auto fits = [&](uint32_t width) {
      return shares_key_tiles(s.head_dim, width, tiles(s.block_k)) &&
             dq_registers(s, streamed.first, streamed.second, width) <= kRegisterLimit;
    };
    const uint32_t width = widest_fitting_slice(s.head_dim, fits);
    if (fits(width)) return {width, streamed.first, streamed.second};
  }
  // 4 slices of dQ with Q and dO streamed fit every head dim (tests/test_kernel_registers.py checks every plan)
  throw std::logic_error("attention backward: no column slicing of dQ fits the register limit");
}

uint32_t dkdv_registers(const AttentionTileShape& s, uint32_t outputs, bool stream_k, bool stream_v,
                        uint32_t slice_dim) {
  const bool dk = outputs & MFA_DKDV_DK, dv = outputs & MFA_DKDV_DV, both = dk && dv;
  const uint32_t dk_dim = both ? s.head_dim : slice_dim, dv_dim = both ? s.value_dim : slice_dim;
  const uint32_t held_tiles = held(s, s.head_dim, stream_k) + (dk ? held(s, s.value_dim, stream_v) : 0) +
                              (dk ? tiles(dk_dim) * kFloatTile : 0) + (dv ? tiles(dv_dim) * kFloatTile : 0) +
                              kFloatTile;  // K, V, dK, dV, the score tile
  // S^T = K Q^T: a K tile in use and a Q tile; dP^T = V dO^T (dK only): the dP tile, a V tile in use and a dO tile;
  // the dV and dK products: one staged tile (and the dP tile).
  const uint32_t scores = in_use(s, stream_k) + s.operand_registers;
  const uint32_t dp = dk ? kFloatTile + in_use(s, stream_v) + s.operand_registers : 0;
  return kRegisterAllowance + held_tiles + std::max(scores, dp);
}

}  // namespace mfa
