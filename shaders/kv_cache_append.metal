// KV-cache append with fused rotary embeddings: writes the new tokens' keys (rotated, rotary.h) and values into the
// paged caches in place, in one launch for both. Token t of sequence b goes to logical cache position
// pos = positions[b] + t, at row pos % page_size of page block_table[b][pos / page_size]; its key rotates at pos.
//
// Grid: one thread per unit of a (batch, head, token) row (rotary.h: a rotated pair, or two elements copied), first
// the key's units, then the value's; MFA_KV_CACHE_THREADS threads per threadgroup over the flattened units, so
// neighbouring threads touch neighbouring elements of a row. The host has checked every page and position the call
// touches; a page outside the pool is skipped all the same, so no block-table entry can make the kernel write outside
// the caches.
//
// Defines (chosen by csrc/kv_cache/plan.cpp): MFA_T (caches and new tokens), MFA_ROTARY_T (cos and sin tables).
#include <metal_stdlib>
using namespace metal;
#include "kv_cache_params.h"
#include "rotary.h"

[[max_total_threads_per_threadgroup(MFA_KV_CACHE_THREADS)]]
kernel void kv_cache_append(device MFA_T* k_cache [[buffer(MFA_KVC_K_CACHE)]],
                            device MFA_T* v_cache [[buffer(MFA_KVC_V_CACHE)]],
                            device const MFA_T* k [[buffer(MFA_KVC_K)]],
                            device const MFA_T* v [[buffer(MFA_KVC_V)]],
                            device const int* block_table [[buffer(MFA_KVC_BLOCK_TABLE)]],
                            device const int* positions [[buffer(MFA_KVC_POSITIONS)]],
                            device const MFA_ROTARY_T* cos_table [[buffer(MFA_KVC_COS)]],
                            device const MFA_ROTARY_T* sin_table [[buffer(MFA_KVC_SIN)]],
                            constant KvCacheAppendParams& p [[buffer(MFA_KVC_PARAMS)]],
                            uint group [[threadgroup_position_in_grid]],
                            uint tid [[thread_index_in_threadgroup]]) {
  const uint g = group * MFA_KV_CACHE_THREADS + tid;
  if (g >= p.threads) return;
  const uint row = g / p.units_per_row, unit = g % p.units_per_row;
  const uint token = row % p.new_len, head = row / p.new_len % p.kv_heads, batch = row / p.new_len / p.kv_heads;
  const uint position = uint(positions[long(batch) * p.positions_stride]) + token;
  const int page = block_table[long(batch) * p.block_table_strides[0] +
                               long(position / p.page_size) * p.block_table_strides[1]];
  if (page < 0 || uint(page) >= p.pages) return;
  const uint slot = position % p.page_size;
  if (unit < p.k_units) {
    device MFA_T* dst = k_cache + long(page) * p.k_cache_strides[0] + long(head) * p.k_cache_strides[1] +
                        long(slot) * p.k_cache_strides[2];
    device const MFA_T* src = k + long(batch) * p.k_strides[0] + long(head) * p.k_strides[1] +
                              long(token) * p.k_strides[2];
    mfa_rotary_unit(dst, src, unit, p.head_dim, p.rotary, cos_table, sin_table, position);
  } else {
    device MFA_T* dst = v_cache + long(page) * p.v_cache_strides[0] + long(head) * p.v_cache_strides[1] +
                        long(slot) * p.v_cache_strides[2];
    device const MFA_T* src = v + long(batch) * p.v_strides[0] + long(head) * p.v_strides[1] +
                              long(token) * p.v_strides[2];
    mfa_copy_pair(dst, src, 2 * (unit - p.k_units), p.value_dim);
  }
}
