// Attention backward, first pass: D = rowsum(dO * O) for every query row, in float. The dQ and dK/dV kernels read
// it instead of recomputing it per tile.
//
// Grid: x = blocks of 4 rows of the (B, Hq, Lq) row space; one SIMD-group per row, lanes striding over Ev.
#include <metal_stdlib>
using namespace metal;
#include "attention_params.h"

kernel void attention_backward_delta(device const MFA_T* grad_out [[buffer(MFA_ATTN_GRAD_OUT)]],
                                     device const MFA_T* out [[buffer(MFA_ATTN_OUT)]],
                                     device float* delta [[buffer(MFA_ATTN_DELTA)]],
                                     constant AttentionParams& p [[buffer(MFA_ATTN_PARAMS)]],
                                     uint group [[threadgroup_position_in_grid]],
                                     ushort sg [[simdgroup_index_in_threadgroup]],
                                     ushort lane [[thread_index_in_simdgroup]]) {
  const long rows = long(p.varlen ? 1 : p.batch) * p.q_heads * p.q_len;
  const long row = long(group) * 4 + sg;
  float sum = 0.0f;
  if (row < rows) {
    for (uint d = lane; d < p.value_dim; d += 32) sum += float(grad_out[row * p.value_dim + d]) * float(out[row * p.value_dim + d]);
  }
  sum = simd_sum(sum);
  if (row < rows && lane == 0) delta[row] = sum;
}
