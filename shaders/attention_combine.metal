// Split-KV combine (flash-decoding): merges the per-split partial outputs and softmax stats (max, sum) that
// attention_forward wrote with MFA_SPLIT_KV into the final output and stats.
//
// Grid: x = query position (up to the longest sequence), y = query head, z = batch (or sequence); one SIMD-group
// per row, its lanes striding over the value dim. Splits with sum 0 (no allowed key, or scores that held a NaN) carry
// stats (-inf, 0) and weigh 0; their max enters no arithmetic (attention_softmax.h: fast math).
#include <metal_stdlib>
using namespace metal;
#include "attention_params.h"
#include "attention_softmax.h"

#ifndef MFA_SINKS
#error "MFA_SINKS says whether the rows' softmax takes the sinks (attention_params.h)"
#endif

// A split's sum rescaled to the row's max (the forward's own correction); 0 for a split with sum 0.
inline float split_weight(float2 split, float row_max) {
  return split.y > 0.0f ? split.y * attention_exp(split.x, row_max) : 0.0f;
}

[[max_total_threads_per_threadgroup(32)]]
kernel void attention_combine(device const float* partial_out [[buffer(MFA_ATTN_PARTIAL_OUT)]],
                              device const float2* partial_stats [[buffer(MFA_ATTN_PARTIAL_STATS)]],
                              device const int* cu_q [[buffer(MFA_ATTN_CU_Q)]],
                              device MFA_T* out [[buffer(MFA_ATTN_OUT)]],
                              device float2* stats [[buffer(MFA_ATTN_STATS)]],
                              constant AttentionParams& p [[buffer(MFA_ATTN_PARAMS)]],
                              device const float* sinks [[buffer(MFA_ATTN_SINKS)]],
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

  // The row's max is the largest max of the splits with a sum; a row no split attended keeps sum 0 and gets 0.
  float row_max = MFA_MASKED_SCORE;
  for (uint s = 0; s < p.num_splits; s++) {
    const float2 split = partial_stats[first + s];
    if (split.y > 0.0f) row_max = max(row_max, split.x);
  }
#if MFA_SINKS  // the sink joins as one more split with no output: its weight is in the sum only
  const float sink = sinks[group.y];
  row_max = max(row_max, sink);
  float row_sum = attention_exp(sink, row_max);
#else
  float row_sum = 0.0f;
#endif
  for (uint s = 0; s < p.num_splits; s++) row_sum += split_weight(partial_stats[first + s], row_max);
  const float inv_sum = attention_inverse_sum(row_sum);
  for (uint d = lane; d < p.value_dim; d += 32) {
    // weight 0 x a NaN partial (a split whose scores held a NaN) keeps the NaN, as the unsplit kernel's output does
    float acc = 0.0f;
    for (uint s = 0; s < p.num_splits; s++) {
      acc += split_weight(partial_stats[first + s], row_max) * partial_out[(first + s) * p.value_dim + d];
    }
    out[row * p.value_dim + d] = MFA_T(acc * inv_sum);
  }
  if (lane == 0) stats[row] = attention_stats(row_max, row_sum);
}
