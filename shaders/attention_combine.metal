// Split-KV combine (flash-decoding): merges the per-split partial outputs and log-sum-exps that
// attention_forward wrote with MFA_SPLIT_KV into the final output and log-sum-exp.
//
// Grid: x = query position (up to the longest sequence), y = query head, z = batch (or sequence); one SIMD-group
// per row, its lanes striding over the value dim. Splits that saw no allowed key carry lse -inf and weigh 0.
#include <metal_stdlib>
using namespace metal;
#include "attention_params.h"

kernel void attention_combine(device const float* partial_out [[buffer(MFA_ATTN_PARTIAL_OUT)]],
                              device const float* partial_lse [[buffer(MFA_ATTN_PARTIAL_LSE)]],
                              device const int* cu_q [[buffer(MFA_ATTN_CU_Q)]],
                              device MFA_T* out [[buffer(MFA_ATTN_OUT)]],
                              device float* lse [[buffer(MFA_ATTN_LSE)]],
                              constant AttentionParams& p [[buffer(MFA_ATTN_PARAMS)]],
                              uint3 group [[threadgroup_position_in_grid]],
                              ushort lane [[thread_index_in_simdgroup]]) {
  long q_first = 0;
  int L = int(p.q_len);
  if (p.varlen) {
    q_first = cu_q[group.z];
    L = cu_q[group.z + 1] - cu_q[group.z];
  }
  if (int(group.x) >= L) return;
  const uint tensor_batch = p.varlen ? 0 : group.z;
  const long row = (long(tensor_batch) * p.q_heads + group.y) * p.q_len + q_first + group.x;
  const long first = row * p.num_splits;

  float max_lse = -INFINITY;
  for (uint s = 0; s < p.num_splits; s++) max_lse = max(max_lse, partial_lse[first + s]);
  if (max_lse == -INFINITY) {  // no split attended any key: 0, unless a split's scores held a NaN (its lse is -inf
    // too, and its partial output NaN): 0 x partial keeps that NaN, as the unsplit kernel's output keeps it
    for (uint d = lane; d < p.value_dim; d += 32) {
      float acc = 0.0f;
      for (uint s = 0; s < p.num_splits; s++) acc += 0.0f * partial_out[(first + s) * p.value_dim + d];
      out[row * p.value_dim + d] = MFA_T(acc);
    }
    if (lane == 0) lse[row] = -INFINITY;
    return;
  }
  float total = 0.0f;
  for (uint s = 0; s < p.num_splits; s++) total += exp(partial_lse[first + s] - max_lse);
  for (uint d = lane; d < p.value_dim; d += 32) {
    float acc = 0.0f;
    for (uint s = 0; s < p.num_splits; s++) {
      acc += exp(partial_lse[first + s] - max_lse) * partial_out[(first + s) * p.value_dim + d];
    }
    out[row * p.value_dim + d] = MFA_T(acc / total);
  }
  if (lane == 0) lse[row] = max_lse + log(total);
}
