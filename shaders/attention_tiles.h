// Tile primitives shared by the attention kernels: where a lane's elements sit in an 8x8 simdgroup_matrix, staging
// a block of rows through threadgroup memory in the input type (16 bytes per access where the rows allow), and loading
// one row per lane straight into register tiles.
// Loops over register tiles (trip count a compile-time constant) are fully unrolled, here and in the kernels: an
// array indexed by the counter of a rolled loop is kept in memory instead of registers.
#pragma once
#include <metal_stdlib>

// This lane's row and first column in every 8x8 tile; it holds (row, col) and (row, col + 1) (facts/metal.md).
inline uint mfa_tile_row(ushort lane) { return ((lane >> 4) & 1) * 4 + ((lane >> 1) & 3); }
inline uint mfa_tile_col(ushort lane) { return ((lane >> 3) & 1) * 4 + (lane & 1) * 2; }

// Copies rows [0, rows) x columns [0, cols) of a device matrix with rows `src_stride` elements apart into a
// ROWS x DIM tile of T (row stride STRIDE) in threadgroup memory, unconverted; zero past either end. `wide`: every
// row begins on 16 bytes and `cols` fills whole 16-byte chunks (AttentionParams::wide_rows), so each access moves 16
// bytes; otherwise one element.
template <uint ROWS, uint DIM, uint STRIDE, uint THREADS, typename T>
inline void mfa_copy_rows(threadgroup T* tile, device const T* src, long src_stride, int rows, uint cols, uint tid,
                          bool wide) {
  constexpr uint CHUNK = 16 / sizeof(T);  // elements per 16 bytes
  static_assert(DIM % CHUNK == 0 && STRIDE % CHUNK == 0, "tile rows hold whole 16-byte chunks");
  if (wide) {
    for (uint e = tid; e < ROWS * DIM / CHUNK; e += THREADS) {
      const uint r = e / (DIM / CHUNK), c = e % (DIM / CHUNK) * CHUNK;
      *reinterpret_cast<threadgroup uint4*>(tile + r * STRIDE + c) =
          int(r) < rows && c < cols ? *reinterpret_cast<device const uint4*>(src + long(r) * src_stride + c) : uint4(0);
    }
  } else {
    for (uint e = tid; e < ROWS * DIM; e += THREADS) {
      const uint r = e / DIM, c = e % DIM;
      tile[r * STRIDE + c] = int(r) < rows && c < cols ? src[long(r) * src_stride + c] : T(0);
    }
  }
}

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
