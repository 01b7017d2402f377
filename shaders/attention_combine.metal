// Split-KV combine (flash-decoding): merges the per-split partial outputs and softmax stats (max, sum) that
// attention_forward wrote with MFA_SPLIT_KV into the final output and stats.
//
// Grid: x = query position (up to the longest sequence), y = query head, z = batch (or sequence); one SIMD-group
// per row, its lanes striding over the value dim. Splits that saw no allowed key carry stats (-inf, 0) and weigh 0.
#include <metal_stdlib>
using namespace metal;
#include "attention_params.h"
#include "attention_scores.h"

kernel void attention_combine(device const float* partial_out [[buffer(MFA_ATTN_PARTIAL_OUT)]],
                              device const float2* partial_stats [[buffer(MFA_ATTN_PARTIAL_STATS)]],
                              device const int* cu_q [[buffer(MFA_ATTN_CU_Q)]],
                              device MFA_T* out [[buffer(MFA_ATTN_OUT)]],
                              device float2* stats [[buffer(MFA_ATTN_STATS)]],
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

  // The row's max is the largest split max; each split's sum is rescaled to it (the forward's own correction).
  float row_max = -INFINITY;
  for (uint s = 0; s < p.num_splits; s++) row_max = max(row_max, partial_stats[first + s].x);
  if (row_max == -INFINITY) {  // no split attended any key: 0, unless a split's scores held a NaN (its stats are
    // (-inf, 0) too, and its partial output NaN): 0 x partial keeps that NaN, as the unsplit kernel's output keeps it
    for (uint d = lane; d < p.value_dim; d += 32) {
      float acc = 0.0f;
      for (uint s = 0; s < p.num_splits; s++) acc += 0.0f * partial_out[(first + s) * p.value_dim + d];
      out[row * p.value_dim + d] = MFA_T(acc);
    }
    if (lane == 0) stats[row] = float2(-INFINITY, 0.0f);
    return;
  }
  float row_sum = 0.0f;
  for (uint s = 0; s < p.num_splits; s++) row_sum += partial_stats[first + s].y * attention_exp(partial_stats[first + s].x, row_max);
  const float inv_sum = attention_inverse_sum(row_sum);
  for (uint d = lane; d < p.value_dim; d += 32) {
    float acc = 0.0f;
    for (uint s = 0; s < p.num_splits; s++) {
      const float2 split = partial_stats[first + s];
      acc += split.y * attention_exp(split.x, row_max) * partial_out[(first + s) * p.value_dim + d];
    }
    out[row * p.value_dim + d] = MFA_T(acc * inv_sum);
  }
  if (lane == 0) stats[row] = float2(row_max, row_sum);
}
