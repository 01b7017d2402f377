// Tile primitives of the GEMM: staging an operand block through threadgroup memory from any strides, loading the
// register fragments of one 16-deep K chunk with 4-element accesses, and the epilogue's 4-element stores.
//
// The kernel-wide order of K and N inside the tiles. K advances in chunks of 16 whose two 8x8 fragments interleave
// it: column j of A's fragment f, and row j of B's, is k = 2j + f of the chunk, so a lane's four A elements of a
// chunk (columns c, c + 1 of both fragments) are the 4 consecutive k from 2c. Column tiles pair up the same way:
// column j of tile 2q + g of B (and of C) is n = 16q + 2j + g, so a lane's four elements of a pair are 4
// consecutive n. A product summed over k in any order is the same product; the pairing only decides which
// accumulator holds which element of C.
#pragma once
#include <metal_stdlib>
#include "gemm_params.h"
#include "operand_tiles.h"
#include "tiles.h"

// Copies rows [0, rows) x columns [0, cols) of a strided device matrix into a ROWS x COLS row-major tile of T in
// threadgroup memory, zero elsewhere; `mode` is the planner's MFA_GEMM_COPY_* for the operand. A wide mode moves
// whole accesses only, so where the valid part does not fill them (edges) it copies element by element.
template <uint ROWS, uint COLS, uint THREADS, typename T>
inline void mfa_stage_block(threadgroup T* tile, device const T* src, long row_stride, long col_stride, uint rows,
                            uint cols, uint tid, uint mode) {
  if (mode == MFA_GEMM_COPY_ROWS) {
    mfa_copy_rows<ROWS, COLS, COLS, THREADS>(tile, src, row_stride, int(rows), cols, tid, cols % (16 / sizeof(T)) == 0);
  } else if (mode == MFA_GEMM_COPY_COLUMNS && rows % 4 == 0) {
    for (uint e = tid; e < ROWS / 4 * COLS; e += THREADS) {  // consecutive threads walk down a column
      const uint c = e / (ROWS / 4), r = e % (ROWS / 4) * 4;
      const vec<T, 4> v = r < rows && c < cols ? *reinterpret_cast<device const vec<T, 4>*>(src + long(c) * col_stride + r)
                                               : vec<T, 4>(T(0));
      #pragma clang loop unroll(full)
      for (uint t = 0; t < 4; t++) tile[(r + t) * COLS + c] = v[t];
    }
  } else {
    const bool along_rows = col_stride <= row_stride;  // consecutive threads walk the smaller stride
    for (uint e = tid; e < ROWS * COLS; e += THREADS) {
      const uint r = along_rows ? e / COLS : e % ROWS;
      const uint c = along_rows ? e % COLS : e / ROWS;
      tile[r * COLS + c] = r < rows && c < cols ? src[long(r) * row_stride + long(c) * col_stride] : T(0);
    }
  }
}

// The fragments of A for one K chunk: TILES row tiles x 2 K fragments (a[2 i + f]). `rows` points at the chunk's
// first element as 4-element vectors (device or threadgroup memory), `stride4` vectors per row.
template <uint TILES, typename V>
inline void mfa_load_a_chunk(thread mfa_operand_tile* a, V rows, ulong stride4, ushort lane) {
  #pragma clang loop unroll(full)
  for (uint i = 0; i < TILES; i++) {
    const auto v = rows[(8 * i + mfa_tile_row(lane)) * stride4 + mfa_tile_col(lane) / 2];
    mfa_set_operand(a[2 * i], v.x, v.z);
    mfa_set_operand(a[2 * i + 1], v.y, v.w);
  }
}

// The fragments of B for one K chunk: 2 K fragments x 2 PAIRS column tiles (b[f * 2 PAIRS + j]), from `rows` as for
// mfa_load_a_chunk.
template <uint PAIRS, typename V>
inline void mfa_load_b_chunk(thread mfa_operand_tile* b, V rows, ulong stride4, ushort lane) {
  #pragma clang loop unroll(full)
  for (uint f = 0; f < 2; f++) {
    #pragma clang loop unroll(full)
    for (uint q = 0; q < PAIRS; q++) {
      const auto w = rows[(2 * mfa_tile_row(lane) + f) * stride4 + 4 * q + mfa_tile_col(lane) / 2];
      mfa_set_operand(b[f * 2 * PAIRS + 2 * q], w.x, w.z);
      mfa_set_operand(b[f * 2 * PAIRS + 2 * q + 1], w.y, w.w);
    }
  }
}

// This lane's 4 consecutive elements of C held by the column tiles 2q and 2q + 1 of one row tile.
inline float4 mfa_pair_elements(const thread metal::simdgroup_float8x8& even, const thread metal::simdgroup_float8x8& odd) {
  const float2 e = even.thread_elements(), o = odd.thread_elements();
  return float4(e.x, o.x, e.y, o.y);
}

inline float4 mfa_widen4(vec<MFA_T, 4> v) { return float4(float(v.x), float(v.y), float(v.z), float(v.w)); }

// The epilogue of 4 consecutive elements of C from `col` (`valid` of them inside C): add the existing C and the
// bias in float, round once to the output type. One access each where the planner allows (vector_c).
inline void mfa_store_c4(device MFA_T* c, device const MFA_T* bias, constant GemmParams& p, long index, uint col,
                         uint valid, float4 sum) {
  if (p.vector_c && valid >= 4) {
    device vec<MFA_T, 4>* out = reinterpret_cast<device vec<MFA_T, 4>*>(c + index);
    if (p.accumulate) sum += mfa_widen4(*out);
    if (p.has_bias) sum += mfa_widen4(*reinterpret_cast<device const vec<MFA_T, 4>*>(bias + col));
    vec<MFA_T, 4> rounded;
    #pragma clang loop unroll(full)
    for (uint t = 0; t < 4; t++) rounded[t] = MFA_T(sum[t]);
    *out = rounded;
    return;
  }
  for (uint t = 0; t < min(valid, 4u); t++) {
    float e = sum[t];
    if (p.accumulate) e += float(c[index + t]);
    if (p.has_bias) e += float(bias[col + t]);
    c[index + t] = MFA_T(e);
  }
}
