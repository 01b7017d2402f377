// Tile primitives of the attention kernels: loading and storing one row per lane straight from and to register tiles
// (the lane layout and the staging of rows are in tiles.h).
#pragma once
#include <metal_stdlib>
#include "tiles.h"

// Loads this lane's row (`row` points at its first element; `valid` false for rows past the end) into DIM / 8
// register tiles as float, zero past `cols`. `pairs`: the row begins on 2 elements' alignment and `cols` is even, so
// the lane's two elements of a tile are one access.
template <uint DIM, typename T>
inline void mfa_load_row_tiles(thread metal::simdgroup_float8x8* tiles, device const T* row, bool valid, uint cols,
                               ushort lane, bool pairs) {
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DIM / 8; d++) {
    thread float2& e = tiles[d].thread_elements();
    const uint c = d * 8 + mfa_tile_col(lane);
    if (pairs) {
      e = valid && c < cols ? float2(*reinterpret_cast<device const vec<T, 2>*>(row + c)) : float2(0.0f);
    } else {
      e.x = valid && c < cols ? float(row[c]) : 0.0f;
      e.y = valid && c + 1 < cols ? float(row[c + 1]) : 0.0f;
    }
  }
}

// Stores this lane's row of DIM / 8 register tiles (times `factor`) to a row of `cols` elements; `pairs` as for
// mfa_load_row_tiles.
template <uint DIM, typename T>
inline void mfa_store_row_tiles(device T* row, thread metal::simdgroup_float8x8* tiles, float factor, uint cols,
                                ushort lane, bool pairs) {
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DIM / 8; d++) {
    const float2 e = tiles[d].thread_elements() * factor;
    const uint c = d * 8 + mfa_tile_col(lane);
    if (pairs) {
      vec<T, 2> pair;
      pair.x = T(e.x);
      pair.y = T(e.y);
      if (c < cols) *reinterpret_cast<device vec<T, 2>*>(row + c) = pair;
    } else {
      if (c < cols) row[c] = T(e.x);
      if (c + 1 < cols) row[c + 1] = T(e.y);
    }
  }
}

// Loads tile d of the transpose of 8 rows of a row-major matrix (`cols` elements per row): tile element (r, c) is
// row c, column d * 8 + r; zero past `rows` rows or `cols` columns. The right operand of (8 rows) x M^T, with the
// values a transposed simdgroup_load of the same rows staged as float would give.
template <typename T>
inline void mfa_load_transposed_tile(thread metal::simdgroup_float8x8& tile, device const T* first_row, int rows,
                                     uint cols, uint d, ushort lane) {
  thread float2& e = tile.thread_elements();
  const uint c = d * 8 + mfa_tile_row(lane), r = mfa_tile_col(lane);
  e.x = int(r) < rows && c < cols ? float(first_row[long(r) * cols + c]) : 0.0f;
  e.y = int(r) + 1 < rows && c < cols ? float(first_row[long(r + 1) * cols + c]) : 0.0f;
}
