// Each estimate is the kernel's peak: the tiles held through its loops plus the largest set alive at one point of a
// loop body (shaders/attention_*.metal and operand_tiles.h, in the order they declare them).
#include "attention/registers.h"

#include <algorithm>

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
  const uint32_t held_tiles = held(s, s.head_dim, stream_q) + tiles(out_dim) * kFloatTile +
                              tiles(s.block_k) * kFloatTile;  // Q, O, the scores
  // Zeroing the score tiles (make_filled_simdgroup_matrix's tile); Q K^T: a Q tile in use and a K tile; P V: a V
  // tile.
  const uint32_t body = std::max(kFloatTile, in_use(s, stream_q) + s.operand_registers);
  return kRegisterAllowance + held_tiles + body;
}

uint32_t dq_registers(const AttentionTileShape& s, bool stream_q, bool stream_do, uint32_t dq_dim) {
  const uint32_t held_tiles = held(s, s.head_dim, stream_q) + held(s, s.value_dim, stream_do) +
                              tiles(dq_dim) * kFloatTile + 2 * kFloatTile;  // Q, dO, dQ, the score and dP tiles
  // S = Q K^T and dP = dO V^T: a Q or dO tile in use and a K or V tile; dQ += dS K: a K tile.
  const uint32_t body = std::max(in_use(s, stream_q), in_use(s, stream_do)) + s.operand_registers;
  return kRegisterAllowance + held_tiles + body;
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
