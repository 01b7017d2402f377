// The host/kernel contract of the GEMM kernels: one params struct and the buffer indices, included by both
// shaders/gemm.metal and the C++ planner (csrc/gemm/), so the two can never disagree about layout.
//
// C (batch, M, N) = A (batch, M, K) x B (batch, K, N) (+ C if accumulate) (+ bias (N,)). A and B are read through
// element strides (a transposed operand is just swapped strides; a batch stride of 0 broadcasts one matrix over
// the batch). C, bias and the split-K partials are contiguous.
#pragma once

#include "portable_types.h"

// Buffer indices of gemm and gemm_reduce ([[buffer(i)]]).
#define MFA_GEMM_A 0
#define MFA_GEMM_B 1
#define MFA_GEMM_BIAS 2
#define MFA_GEMM_C 3        // C in the input dtype, or (split-K) the float partials of gemm
#define MFA_GEMM_PARAMS 4
#define MFA_GEMM_PARTIAL 5  // gemm_reduce's input: float partials (splits, batch, M, N)

// A threadgroup is a grid of SIMD-groups, each owning an equal sub-tile of the output block (multiples of 8).
#define MFA_GEMM_SIMDGROUPS_M 2
#define MFA_GEMM_SIMDGROUPS_N 2
#define MFA_GEMM_REDUCE_THREADS 256  // threads per threadgroup of gemm_reduce (one output element each)

struct GemmParams {
  mfa_i64 a_strides[3];  // elements over (batch, M, K); batch stride 0 = one matrix for every batch
  mfa_i64 b_strides[3];  // elements over (batch, K, N)
  mfa_u32 batch;
  mfa_u32 m;
  mfa_u32 n;
  mfa_u32 k;
  mfa_u32 has_bias;
  mfa_u32 accumulate;       // add the existing C
  mfa_u32 num_splits;       // K splits; > 1 writes float partials that gemm_reduce sums in split order
  mfa_u32 blocks_per_split; // K blocks per split
};
