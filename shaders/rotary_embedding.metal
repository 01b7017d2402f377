// Rotary embedding of queries (or any (B, H, L, D) rows): out = x with the first rotary_dim elements of every row
// rotated (rotary.h), the rest copied. Token t of batch b rotates at position positions[b] + t, or positions[b] for
// every token when same_position (FlashAttention's queries of a non-causal decode step). x is read through its
// strides; out is contiguous.
//
// Grid: one thread per unit of a (batch, head, token) row, MFA_KV_CACHE_THREADS threads per threadgroup over the
// flattened units. Defines (chosen by csrc/kv_cache/plan.cpp): MFA_T (x and out), MFA_ROTARY_T (cos and sin tables).
#include <metal_stdlib>
using namespace metal;
#include "kv_cache_params.h"
#include "rotary.h"

[[max_total_threads_per_threadgroup(MFA_KV_CACHE_THREADS)]]
kernel void rotary_embedding(device const MFA_T* x [[buffer(MFA_ROPE_X)]],
                             device MFA_T* out [[buffer(MFA_ROPE_OUT)]],
                             device const int* positions [[buffer(MFA_ROPE_POSITIONS)]],
                             device const MFA_ROTARY_T* cos_table [[buffer(MFA_ROPE_COS)]],
                             device const MFA_ROTARY_T* sin_table [[buffer(MFA_ROPE_SIN)]],
                             constant RotaryEmbeddingParams& p [[buffer(MFA_ROPE_PARAMS)]],
                             uint group [[threadgroup_position_in_grid]],
                             uint tid [[thread_index_in_threadgroup]]) {
  const uint g = group * MFA_KV_CACHE_THREADS + tid;
  if (g >= p.threads) return;
  const uint row = g / p.units_per_row, unit = g % p.units_per_row;
  const uint token = row % p.seq_len, head = row / p.seq_len % p.heads, batch = row / p.seq_len / p.heads;
  const uint position = uint(positions[long(batch) * p.positions_stride]) + (p.same_position ? 0 : token);
  device const MFA_T* src = x + long(batch) * p.x_strides[0] + long(head) * p.x_strides[1] +
                            long(token) * p.x_strides[2];
  mfa_rotary_unit(out + long(row) * p.head_dim, src, unit, p.head_dim, p.rotary, cos_table, sin_table, position);
}
