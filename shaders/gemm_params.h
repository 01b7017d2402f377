// The host/kernel contract of the GEMM kernels: one params struct and the buffer indices, included by both
// shaders/gemm.metal and the C++ planner (csrc/gemm/), so the two can never disagree about layout.
//
// C (batch, M, N) = A (batch, M, K) x B (batch, K, N) (+ C if accumulate) (+ bias (N,)). A and B are read through
// element strides (a transposed operand is just swapped strides; a batch stride of 0 broadcasts one matrix over
// the batch). C, bias and the Stream-K partials are contiguous.
#pragma once

#include "portable_types.h"

// Buffer indices of gemm and gemm_reduce ([[buffer(i)]]).
#define MFA_GEMM_A 0
#define MFA_GEMM_B 1
#define MFA_GEMM_BIAS 2
#define MFA_GEMM_C 3
#define MFA_GEMM_PARAMS 4
#define MFA_GEMM_PARTIAL 5  // float partial tiles: two slots of MFA_BLOCK_M x MFA_BLOCK_N per worker

// A threadgroup is a grid of SIMD-groups, each owning an equal sub-tile of the output block.
#define MFA_GEMM_SIMDGROUPS_M 2
#define MFA_GEMM_SIMDGROUPS_N 2
#define MFA_GEMM_REDUCE_THREADS 256  // threads per threadgroup of gemm_reduce

// How an operand is staged through threadgroup memory (GemmParams::copy_modes, 2 bits per operand: A bits 0-1,
// B bits 2-3): 16 bytes along a row (columns contiguous, rows on 16 bytes), 4 elements down a column (rows
// contiguous, columns on 4 elements), or one element per access (any strides).
#define MFA_GEMM_COPY_SCALAR 0
#define MFA_GEMM_COPY_ROWS 1
#define MFA_GEMM_COPY_COLUMNS 2

struct GemmParams {
  mfa_i64 a_strides[3];  // elements over (batch, M, K); batch stride 0 = one matrix for every batch
  mfa_i64 b_strides[3];  // elements over (batch, K, N)
  // Stream-K: the work is U = batch x row_blocks x col_blocks tiles x k_blocks K blocks ("units"), in tile order;
  // worker w (threadgroup w) takes units [start(w), start(w + 1)) with start(w) = w q + min(w, r) (q, r: U divided
  // by the workers), so the first r workers take one unit more.
  mfa_u64 units_per_worker;  // q
  mfa_u32 longer_workers;    // r
  mfa_u32 workers;
  mfa_u32 batch;
  mfa_u32 m;
  mfa_u32 n;
  mfa_u32 k;
  mfa_u32 row_blocks;  // ceil(M / MFA_BLOCK_M)
  mfa_u32 col_blocks;  // ceil(N / MFA_BLOCK_N)
  mfa_u32 k_blocks;    // max(1, ceil(K / MFA_BLOCK_K)): a tile's units (K = 0 still writes bias or C)
  mfa_u32 has_bias;
  mfa_u32 accumulate;  // add the existing C
  mfa_u32 copy_modes;  // MFA_GEMM_COPY_* of A (bits 0-1) and B (bits 2-3)
  mfa_u32 vector_c;    // C (and bias) rows take 4-element accesses: N % 4 == 0, both begin on 16 bytes
};
