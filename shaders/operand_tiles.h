// The matrix unit's operand tiles of the input type MFA_T (attention and GEMM): MFA_T itself, or, for bfloat before
// Apple9 (MFA_BFLOAT_AS_FLOAT, where bfloat arithmetic is slow), float, converted where it is loaded or used.
#pragma once
#include <metal_stdlib>
#include "tiles.h"

// mfa_load_operand: an 8x8 tile at `src` (`stride` elements per row), transposed or not, origin 0; `lane`: this
// lane's index in the SIMD-group.
#if MFA_BFLOAT_AS_FLOAT
typedef float mfa_operand_t;
typedef metal::simdgroup_float8x8 mfa_operand_tile;
// This lane's two elements, read as bfloat and widened: no bfloat tile is held meanwhile.
inline void mfa_load_operand(thread mfa_operand_tile& tile, threadgroup const bfloat* src, ulong stride, bool transpose,
                             ushort lane) {
  const uint r = mfa_tile_row(lane), c = mfa_tile_col(lane);
  thread float2& e = tile.thread_elements();
  if (transpose) {
    e = float2(float(src[c * stride + r]), float(src[(c + 1) * stride + r]));
  } else {
    e = float2(*reinterpret_cast<threadgroup const vec<bfloat, 2>*>(src + r * stride + c));
  }
}
#else
typedef MFA_T mfa_operand_t;
typedef metal::simdgroup_matrix<MFA_T, 8, 8> mfa_operand_tile;
inline void mfa_load_operand(thread mfa_operand_tile& tile, threadgroup const MFA_T* src, ulong stride, bool transpose,
                             ushort) {
  simdgroup_load(tile, src, stride, ulong2(0, 0), transpose);
}
#endif
// A tile in the input type, as the matrix unit takes it: itself, or widened to float (MFA_BFLOAT_AS_FLOAT).
typedef metal::simdgroup_matrix<MFA_T, 8, 8> mfa_input_tile;

// Sets this lane's two elements of an operand tile from two input-type values.
inline void mfa_set_operand(thread mfa_operand_tile& tile, MFA_T first, MFA_T second) {
  thread vec<mfa_operand_t, 2>& e = tile.thread_elements();
  e.x = mfa_operand_t(first);
  e.y = mfa_operand_t(second);
}

// Tile d of this lane's row (`row` points at its first element; `valid` false for rows past the end) in a tile of
// element type E, zero past `cols`. `pairs`: the row begins on 2 elements' alignment and `cols` is even, so the
// lane's two elements are one access.
template <typename E>
inline void mfa_load_row_tile(thread metal::simdgroup_matrix<E, 8, 8>& tile, device const MFA_T* row, bool valid,
                              uint cols, uint d, ushort lane, bool pairs) {
  const uint c = d * 8 + mfa_tile_col(lane);
  thread vec<E, 2>& e = tile.thread_elements();
  if (pairs) {
    const vec<MFA_T, 2> v = valid && c < cols ? *reinterpret_cast<device const vec<MFA_T, 2>*>(row + c) : vec<MFA_T, 2>(MFA_T(0));
    e.x = E(v.x);
    e.y = E(v.y);
  } else {
    e.x = valid && c < cols ? E(row[c]) : E(0);
    e.y = valid && c + 1 < cols ? E(row[c + 1]) : E(0);
  }
}

// The DIM / 8 tiles of this lane's row as operands (arguments as mfa_load_row_tile), or (EVERY > 1) its tiles
// first, first + EVERY, ...: the share of the row one of EVERY SIMD-groups multiplies. Held in registers in the input
// type, loaded once (and, MFA_BFLOAT_AS_FLOAT, widened at each use), or (STREAMED) loaded from device memory at each
// use, where holding them would take more registers than the planner allows (csrc/attention/registers.h).
template <uint DIM, bool STREAMED, uint EVERY = 1>
struct mfa_row_operand {
  mfa_input_tile tiles[(DIM / 8 + EVERY - 1) / EVERY];  // tile d in tiles[d / EVERY]; zero past the row's end
  mfa_row_operand(device const MFA_T* row, bool valid, uint cols, ushort lane, bool pairs, uint first = 0) {
    #pragma clang loop unroll(full)
    for (uint i = 0; i < (DIM / 8 + EVERY - 1) / EVERY; i++) {
      mfa_load_row_tile(tiles[i], row, valid, cols, first + i * EVERY, lane, pairs);
    }
  }
#if MFA_BFLOAT_AS_FLOAT
  mfa_operand_tile tile(uint d) const {
    mfa_operand_tile t;
    t.thread_elements() = float2(tiles[d / EVERY].thread_elements());
    return t;
  }
#else
  const thread mfa_operand_tile& tile(uint d) const { return tiles[d / EVERY]; }
#endif
};
template <uint DIM, uint EVERY>
struct mfa_row_operand<DIM, true, EVERY> {
  device const MFA_T* row;
  bool valid;
  uint cols;
  ushort lane;
  bool pairs;
  mfa_row_operand(device const MFA_T* row, bool valid, uint cols, ushort lane, bool pairs, uint = 0)
      : row(row), valid(valid), cols(cols), lane(lane), pairs(pairs) {}
  mfa_operand_tile tile(uint d) const {
    mfa_operand_tile t;
    mfa_load_row_tile(t, row, valid, cols, d, lane, pairs);
    return t;
  }
};
