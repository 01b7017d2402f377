// Tile primitives of every kernel: where a lane's elements sit in an 8x8 simdgroup_matrix, and staging a block of
// rows through threadgroup memory in the input type (16 bytes per access where the rows allow).
// Loops over register tiles (trip count a compile-time constant) are fully unrolled, here and in the kernels: an
// array indexed by the counter of a rolled loop is kept in memory instead of registers.
#pragma once
#include <metal_stdlib>

// This lane's row and first column in every 8x8 tile; it holds (row, col) and (row, col + 1) (facts/metal.md).
inline uint mfa_tile_row(ushort lane) { return ((lane >> 4) & 1) * 4 + ((lane >> 1) & 3); }
inline uint mfa_tile_col(ushort lane) { return ((lane >> 3) & 1) * 4 + (lane & 1) * 2; }

// Rows `stride` elements apart from `first`: the row source of a plain strided matrix (see mfa_copy_rows).
template <typename T>
struct mfa_strided_rows {
  device const T* first;
  long stride;
  device const T* row(int r) const { return first + long(r) * stride; }
  mfa_strided_rows starting_at(int r) const { return {row(r), stride}; }  // rows r, r + 1, ...
  mfa_strided_rows from_column(uint c) const { return {first + c, stride}; }  // the same rows from column c on
};

// Copies rows [0, rows) x columns [0, cols) of a device matrix into a ROWS x DIM tile of T (row stride STRIDE) in
// threadgroup memory, unconverted; zero past either end. `src.row(r)` is the address of row r (a strided matrix, or
// the pages of a paged K/V cache). `wide`: every row begins on 16 bytes and `cols` fills whole 16-byte chunks (the
// planners decide from strides and offsets), so each access moves 16 bytes; otherwise one element.
template <uint ROWS, uint DIM, uint STRIDE, uint THREADS, typename T, typename Rows>
inline void mfa_copy_rows(threadgroup T* tile, Rows src, int rows, uint cols, uint tid, bool wide) {
  constexpr uint CHUNK = 16 / sizeof(T);  // elements per 16 bytes
  static_assert(DIM % CHUNK == 0 && STRIDE % CHUNK == 0, "tile rows hold whole 16-byte chunks");
  if (wide) {
    for (uint e = tid; e < ROWS * DIM / CHUNK; e += THREADS) {
      const uint r = e / (DIM / CHUNK), c = e % (DIM / CHUNK) * CHUNK;
      *reinterpret_cast<threadgroup uint4*>(tile + r * STRIDE + c) =
          int(r) < rows && c < cols ? *reinterpret_cast<device const uint4*>(src.row(int(r)) + c) : uint4(0);
    }
  } else {
    for (uint e = tid; e < ROWS * DIM; e += THREADS) {
      const uint r = e / DIM, c = e % DIM;
      tile[r * STRIDE + c] = int(r) < rows && c < cols ? src.row(int(r))[c] : T(0);
    }
  }
}

// mfa_copy_rows of rows `src_stride` elements apart from `src`.
template <uint ROWS, uint DIM, uint STRIDE, uint THREADS, typename T>
inline void mfa_copy_rows(threadgroup T* tile, device const T* src, long src_stride, int rows, uint cols, uint tid,
                          bool wide) {
  mfa_copy_rows<ROWS, DIM, STRIDE, THREADS>(tile, mfa_strided_rows<T>{src, src_stride}, rows, cols, tid, wide);
}
