// GEMM: C = A x B (+ C) (+ bias) with fp32 accumulation in simdgroup_float8x8 tiles; split-K reduction.
//
// gemm grid: x = blocks of MFA_BLOCK_N columns, y = blocks of MFA_BLOCK_M rows, z = batch * K splits. Every K block
// of A (MFA_BLOCK_M x MFA_BLOCK_K) and B (MFA_BLOCK_K x MFA_BLOCK_N) is staged through threadgroup memory as float,
// zero past the matrix edges, so any M, N, K and any element strides (transposes, broadcast batches) take one
// code path; each SIMD-group of the MFA_GEMM_SIMDGROUPS_M x _N grid keeps its sub-tile of C in registers.
// The loops over its tiles are fully unrolled: an array indexed by the counter of a rolled loop lives in memory.
// gemm_reduce (split-K only): one thread per element of C sums the partials of every split in order, so the result
// is deterministic, and applies the epilogue.
//
// Defines (chosen by csrc/gemm/plan.cpp): MFA_T (input and output type), MFA_BLOCK_M / _N / _K (multiples of 8,
// M and N also of 8 x the SIMD-group grid), MFA_SPLIT_K (gemm writes float partials for gemm_reduce).
#include <metal_stdlib>
#include "gemm_params.h"
using namespace metal;

#if MFA_SPLIT_K
#define MFA_OUT_T float
#else
#define MFA_OUT_T MFA_T
#endif

constant constexpr uint THREADS = MFA_GEMM_SIMDGROUPS_M * MFA_GEMM_SIMDGROUPS_N * 32;
constant constexpr uint SG_M = MFA_BLOCK_M / MFA_GEMM_SIMDGROUPS_M;  // rows and columns of one SIMD-group's C
constant constexpr uint SG_N = MFA_BLOCK_N / MFA_GEMM_SIMDGROUPS_N;

// Stages a ROWS x COLS block of a strided matrix (rows x cols of it valid) as row-major float, zero elsewhere.
// Consecutive threads walk the dimension with the smaller stride, so device reads coalesce for plain and
// transposed operands alike.
template <uint ROWS, uint COLS>
inline void stage(threadgroup float* tile, device const MFA_T* src, long row_stride, long col_stride, uint rows,
                  uint cols, uint tid) {
  const bool along_rows = col_stride <= row_stride;
  for (uint e = tid; e < ROWS * COLS; e += THREADS) {
    const uint r = along_rows ? e / COLS : e % ROWS;
    const uint c = along_rows ? e % COLS : e / ROWS;
    tile[r * COLS + c] = r < rows && c < cols ? float(src[long(r) * row_stride + long(c) * col_stride]) : 0.0f;
  }
}

// The epilogue: one rounding to the output type after adding the existing C and the bias in float.
inline void store_output(device MFA_T* c, device const MFA_T* bias, constant GemmParams& p, long index, uint col,
                         float sum) {
  if (p.accumulate) sum += float(c[index]);
  if (p.has_bias) sum += float(bias[col]);
  c[index] = MFA_T(sum);
}

[[max_total_threads_per_threadgroup(MFA_GEMM_SIMDGROUPS_M * MFA_GEMM_SIMDGROUPS_N * 32)]]
kernel void gemm(device const MFA_T* a [[buffer(MFA_GEMM_A)]],
                 device const MFA_T* b [[buffer(MFA_GEMM_B)]],
                 device const MFA_T* bias [[buffer(MFA_GEMM_BIAS)]],
                 device MFA_OUT_T* c [[buffer(MFA_GEMM_C)]],
                 constant GemmParams& p [[buffer(MFA_GEMM_PARAMS)]],
                 uint3 group [[threadgroup_position_in_grid]],
                 ushort sg [[simdgroup_index_in_threadgroup]],
                 ushort lane [[thread_index_in_simdgroup]],
                 ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup float a_tile[MFA_BLOCK_M * MFA_BLOCK_K];
  threadgroup float b_tile[MFA_BLOCK_K * MFA_BLOCK_N];
  const uint split = group.z % p.num_splits, batch = group.z / p.num_splits;
  const uint row0 = group.y * MFA_BLOCK_M, col0 = group.x * MFA_BLOCK_N;
  const uint rows = min(uint(MFA_BLOCK_M), p.m - row0), cols = min(uint(MFA_BLOCK_N), p.n - col0);
  device const MFA_T* a_block = a + long(batch) * p.a_strides[0] + long(row0) * p.a_strides[1];
  device const MFA_T* b_block = b + long(batch) * p.b_strides[0] + long(col0) * p.b_strides[2];

  const uint sg_row = sg / MFA_GEMM_SIMDGROUPS_N * SG_M, sg_col = sg % MFA_GEMM_SIMDGROUPS_N * SG_N;
  simdgroup_float8x8 acc[SG_M / 8][SG_N / 8];
  #pragma clang loop unroll(full)
  for (uint i = 0; i < SG_M / 8; i++) {
    #pragma clang loop unroll(full)
    for (uint j = 0; j < SG_N / 8; j++) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  }

  const uint k_blocks = (p.k + MFA_BLOCK_K - 1) / MFA_BLOCK_K;
  const uint block_end = min(k_blocks, (split + 1) * p.blocks_per_split);
  for (uint block = split * p.blocks_per_split; block < block_end; block++) {
    const uint k0 = block * MFA_BLOCK_K, depth = min(uint(MFA_BLOCK_K), p.k - k0);
    threadgroup_barrier(mem_flags::mem_threadgroup);  // every SIMD-group is done with the previous tiles
    stage<MFA_BLOCK_M, MFA_BLOCK_K>(a_tile, a_block + long(k0) * p.a_strides[2], p.a_strides[1], p.a_strides[2],
                                    rows, depth, tid);
    stage<MFA_BLOCK_K, MFA_BLOCK_N>(b_tile, b_block + long(k0) * p.b_strides[1], p.b_strides[1], p.b_strides[2],
                                    depth, cols, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint kk = 0; kk < MFA_BLOCK_K; kk += 8) {
      simdgroup_float8x8 a_frag[SG_M / 8], b_frag[SG_N / 8];
      #pragma clang loop unroll(full)
      for (uint i = 0; i < SG_M / 8; i++) simdgroup_load(a_frag[i], a_tile, MFA_BLOCK_K, ulong2(kk, sg_row + i * 8));
      #pragma clang loop unroll(full)
      for (uint j = 0; j < SG_N / 8; j++) simdgroup_load(b_frag[j], b_tile, MFA_BLOCK_N, ulong2(sg_col + j * 8, kk));
      #pragma clang loop unroll(full)
      for (uint i = 0; i < SG_M / 8; i++) {
        #pragma clang loop unroll(full)
        for (uint j = 0; j < SG_N / 8; j++) simdgroup_multiply_accumulate(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
      }
    }
  }

  // This lane's two elements of every 8x8 tile (lane layout of facts/metal.md).
  const uint tile_row = ((lane >> 4) & 1) * 4 + ((lane >> 1) & 3);
  const uint tile_col = ((lane >> 3) & 1) * 4 + (lane & 1) * 2;
#if MFA_SPLIT_K
  const long plane = (long(split) * p.batch + batch) * p.m;  // partials: (splits, batch, M, N)
#else
  const long plane = long(batch) * p.m;
#endif
  #pragma clang loop unroll(full)
  for (uint i = 0; i < SG_M / 8; i++) {
    const uint row = sg_row + i * 8 + tile_row;
    if (row >= rows) continue;
    #pragma clang loop unroll(full)
    for (uint j = 0; j < SG_N / 8; j++) {
      const float2 e = acc[i][j].thread_elements();
      for (uint t = 0; t < 2; t++) {
        const uint col = sg_col + j * 8 + tile_col + t;
        if (col >= cols) continue;
        const long index = (plane + row0 + row) * p.n + col0 + col;
#if MFA_SPLIT_K
        c[index] = e[t];
#else
        store_output(c, bias, p, index, col0 + col, e[t]);
#endif
      }
    }
  }
}

// Split-K only: a launch covers batch * M * N threads exactly in a 1-D grid (the plan splits only outputs with few
// tiles, far below 2^32 elements).
[[max_total_threads_per_threadgroup(MFA_GEMM_REDUCE_THREADS)]]
kernel void gemm_reduce(device const float* partial [[buffer(MFA_GEMM_PARTIAL)]],
                        device const MFA_T* bias [[buffer(MFA_GEMM_BIAS)]],
                        device MFA_T* c [[buffer(MFA_GEMM_C)]],
                        constant GemmParams& p [[buffer(MFA_GEMM_PARAMS)]],
                        uint index [[thread_position_in_grid]]) {
  const uint total = p.batch * p.m * p.n;
  if (index >= total) return;
  float sum = 0.0f;
  for (uint s = 0; s < p.num_splits; s++) sum += partial[long(s) * total + index];
  store_output(c, bias, p, index, index % p.n, sum);
}
