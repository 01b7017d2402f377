// Attention backward, dK and dV: parallel over key blocks, no atomics. A threadgroup owns MFA_BLOCK_KV keys of one
// K/V head and loops over every query head of its GQA group and every query block in the causal/window band, so the
// group's sum lands in registers and each dK/dV row is written once, in a fixed order (deterministic).
// With a block mask (MFA_MASK_BLOCKS) the query blocks are walked from the key block's q-side lists
// (MFA_ATTN_MASK_Q_LISTS): empty blocks are skipped unread.
// Per query block: S^T = K Q^T, P^T from the forward's softmax stats, dV += (P^T * dropout) dO, dP^T = V dO^T,
// dS^T = P^T * (dP^T - D), dK += dS^T Q (with the softcap chain rule and the scale).
//
// Grid: x = key blocks * column slices of the accumulator, y = K/V head, z = batch (or sequence). One SIMD-group owns
// 8 keys: the dK/dV accumulators (a one-output launch: MFA_SLICE_DIM of its columns) stay in registers, and K and V as operand tiles unless the planner streams them from device memory (MFA_STREAM_K,
// MFA_STREAM_V); Q and dO of the current query block (in the input type, as attention_forward copies K and V), its
// softmax max and 1 / sum, and D are staged in threadgroup memory.
// MFA_DKDV_OUTPUTS (attention_params.h): dK and dV together, or, where both accumulators would take too many
// registers, one of them per launch (the plan's two launches each recompute P; the dV launch needs no dP and stages
// only its slice of dO). MFA_DP_FROM_DEVICE (a dK launch): dO, used only in dP^T = V dO^T, is read from device memory
// instead of staged (float inputs whose two tiles would not fit in threadgroup memory).
#include <metal_stdlib>
using namespace metal;
#include "operand_tiles.h"
#include "attention_params.h"
#include "attention_scores.h"
#include "attention_tiles.h"

#if MFA_MASK_KIND == MFA_MASK_NONE
#define MFA_MASK_T uchar
#endif

constant constexpr uint THREADS = MFA_BLOCK_KV / 8 * 32;
constant constexpr bool ONE_OUTPUT = MFA_DKDV_OUTPUTS != (MFA_DKDV_DK | MFA_DKDV_DV);
constant constexpr uint DK_DIM = ONE_OUTPUT ? MFA_SLICE_DIM : MFA_HEAD_DIM;  // columns of each accumulator held
constant constexpr uint DV_DIM = ONE_OUTPUT ? MFA_SLICE_DIM : MFA_VALUE_DIM;
constant constexpr uint SLICES = ONE_OUTPUT ? ((MFA_DKDV_OUTPUTS & MFA_DKDV_DK ? MFA_HEAD_DIM : MFA_VALUE_DIM) +
                                               MFA_SLICE_DIM - 1) / MFA_SLICE_DIM : 1;
#if !MFA_DP_FROM_DEVICE  // dO columns staged: all of them for dP, the dV slice's alone for a dV launch
constant constexpr uint DO_TILE_DIM = MFA_DKDV_OUTPUTS & MFA_DKDV_DK ? MFA_VALUE_DIM : DV_DIM;
#endif
static_assert(MFA_SLICE_DIM % 8 == 0 && (ONE_OUTPUT || (DK_DIM <= MFA_SLICE_DIM && DV_DIM <= MFA_SLICE_DIM)),
              "a launch of both accumulators holds them whole");
static_assert(!MFA_DP_FROM_DEVICE || MFA_DKDV_OUTPUTS == MFA_DKDV_DK, "dV reads the staged dO");

[[max_total_threads_per_threadgroup(MFA_BLOCK_KV / 8 * 32)]]
kernel void attention_backward_dkdv(device const MFA_T* q [[buffer(MFA_ATTN_Q)]],
                                    device const MFA_T* k [[buffer(MFA_ATTN_K)]],
                                    device const MFA_T* v [[buffer(MFA_ATTN_V)]],
                                    device const MFA_MASK_T* mask [[buffer(MFA_ATTN_MASK)]],
                                    device const float* alibi [[buffer(MFA_ATTN_ALIBI)]],
                                    device const int* cu_q [[buffer(MFA_ATTN_CU_Q)]],
                                    device const int* cu_k [[buffer(MFA_ATTN_CU_K)]],
                                    device const float2* stats [[buffer(MFA_ATTN_STATS)]],
                                    constant AttentionParams& p [[buffer(MFA_ATTN_PARAMS)]],
                                    device uint* tile_count [[buffer(MFA_ATTN_TILE_COUNT)]],
                                    device const MFA_T* grad_out [[buffer(MFA_ATTN_GRAD_OUT)]],
                                    device const float* delta [[buffer(MFA_ATTN_DELTA)]],
                                    device MFA_T* dk [[buffer(MFA_ATTN_DK)]],
                                    device MFA_T* dv [[buffer(MFA_ATTN_DV)]],
                                    device const uint* mask_bits [[buffer(MFA_ATTN_MASK_BITS)]],
                                    device const int* q_lists [[buffer(MFA_ATTN_MASK_Q_LISTS)]],
                                    uint3 group [[threadgroup_position_in_grid]],
                                    uint3 groups [[threadgroups_per_grid]],
                                    ushort sg [[simdgroup_index_in_threadgroup]],
                                    ushort lane [[thread_index_in_simdgroup]],
                                    ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup uint4 q_storage[MFA_BLOCK_Q * MFA_HEAD_DIM * sizeof(MFA_T) / 16];  // 16-byte aligned rows
  threadgroup MFA_T* const q_tile = reinterpret_cast<threadgroup MFA_T*>(q_storage);
#if !MFA_DP_FROM_DEVICE
  threadgroup uint4 do_storage[MFA_BLOCK_Q * DO_TILE_DIM * sizeof(MFA_T) / 16];
  threadgroup MFA_T* const do_tile = reinterpret_cast<threadgroup MFA_T*>(do_storage);
#endif
  threadgroup float2 softmax_tile[MFA_BLOCK_Q];  // (max, 1 / sum)
  threadgroup float delta_tile[MFA_BLOCK_Q];
  const uint seq = group.z, kv_head = group.y, G = p.group;
  const AttentionSequence sq = attention_sequence(p, seq, cu_q, cu_k);
  const int key0 = int(group.x / SLICES) * MFA_BLOCK_KV;
  if (key0 >= sq.kv_len) return;  // varlen: a shorter sequence than the grid's longest (whole threadgroup)
  const uint col0 = group.x % SLICES * MFA_SLICE_DIM;  // a one-output launch: its slice's first column (0 with both)
  const int key_last = min(key0 + MFA_BLOCK_KV, sq.kv_len) - 1;
  const int2 band = attention_query_band(p, sq, key0, key_last);
  const int block_begin = band.x / MFA_BLOCK_Q;
  const int block_end = band.x <= band.y ? band.y / MFA_BLOCK_Q + 1 : block_begin;

  // This lane's key (its row in the 8x8 tiles) and its two query columns.
  const uint tile_col = mfa_tile_col(lane);
  const int key = key0 + int(sg) * 8 + int(mfa_tile_row(lane));
  const bool key_valid = key < sq.kv_len;
  // q, k and v are read through their strides; stats, delta, grad_out, dk and dv are dense, kv_row is this key's
  // index in dk and dv.
  const long kv_row = (long(sq.tensor_batch) * p.kv_heads + kv_head) * p.kv_len + sq.k_first + key;
  const mfa_row_operand<MFA_HEAD_DIM, MFA_STREAM_K> k_row_tiles(
      k + attention_row_offset(p.k_strides, sq.tensor_batch, kv_head, sq.k_first + key), key_valid, p.head_dim, lane,
      p.wide_rows & 2u);
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DK
  const mfa_row_operand<MFA_VALUE_DIM, MFA_STREAM_V> v_row_tiles(
      v + attention_row_offset(p.v_strides, sq.tensor_batch, kv_head, sq.k_first + key), key_valid, p.value_dim, lane,
      p.wide_rows & 4u);
  simdgroup_float8x8 dk_tiles[DK_DIM / 8];
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DK_DIM / 8; d++) dk_tiles[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
#endif
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DV
  simdgroup_float8x8 dv_tiles[DV_DIM / 8];
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DV_DIM / 8; d++) dv_tiles[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
#endif

#if MFA_COUNT_TILES
  uint computed = 0;  // query blocks computed, over the group's heads (MFA_COUNT_TILES)
#endif
  for (uint g = 0; g < G; g++) {
    const uint head = kv_head * G + g;
    const long head_base = (long(sq.tensor_batch) * p.q_heads + head) * p.q_len + sq.q_first;
    device const MFA_T* const do_rows = grad_out + head_base * p.value_dim;
    device const MFA_T* const q_rows = q + attention_row_offset(p.q_strides, sq.tensor_batch, head, sq.q_first);
    for (int block = block_begin; block < block_end; block++) {
      bool mask_full = false;
#if MFA_MASK_KIND == MFA_MASK_BLOCKS  // the q-side lists skip the empty blocks unread (the same for every thread)
      block = attention_next_listed_block(p, q_lists, seq, head, key0 / int(p.mask_block_k),
                                          key_last / int(p.mask_block_k), MFA_BLOCK_Q, block, block_end);
      if (block == block_end) break;
#endif
      const int query0 = block * MFA_BLOCK_Q, queries = min(MFA_BLOCK_Q, sq.q_len - query0);
#if MFA_MASK_KIND == MFA_MASK_BLOCKS  // a listed block holds a non-empty mask block: full, or some need their bits
      mask_full = attention_blocks_cover(p, mask, seq, head, 1, query0, query0 + queries - 1, key0, key_last) ==
                  MFA_BLOCK_FULL;
#endif
#if MFA_COUNT_TILES
      computed++;
#endif
      threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous query block is consumed
      mfa_copy_rows<MFA_BLOCK_Q, MFA_HEAD_DIM, MFA_HEAD_DIM, THREADS>(q_tile, q_rows + query0 * p.q_strides[2],
                                                                      p.q_strides[2], queries, p.head_dim, tid,
                                                                      p.wide_rows & 1u);
#if !MFA_DP_FROM_DEVICE
      const uint do_col0 = MFA_DKDV_OUTPUTS & MFA_DKDV_DK ? 0 : col0;  // the first dO column staged
      mfa_copy_rows<MFA_BLOCK_Q, DO_TILE_DIM, DO_TILE_DIM, THREADS>(do_tile, do_rows + query0 * p.value_dim + do_col0,
                                                                    p.value_dim, queries, p.value_dim - do_col0, tid,
                                                                    p.wide_rows & 8u);
#endif
      if (tid < MFA_BLOCK_Q) {  // rows past the end attend nothing: 1 / sum = 0 makes their probabilities 0
        softmax_tile[tid] = attention_row_softmax(int(tid) < queries ? stats[head_base + query0 + tid] : float2(0.0f));
        delta_tile[tid] = int(tid) < queries ? delta[head_base + query0 + tid] : 0.0f;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      const bool inside_band = attention_inside_band(p, sq, query0, query0 + MFA_BLOCK_Q - 1, key0, key0 + MFA_BLOCK_KV - 1);
      for (uint c = 0; c < MFA_BLOCK_Q / 8; c++) {
        simdgroup_float8x8 s_tile = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        #pragma clang loop unroll(full)
        for (uint d = 0; d < MFA_HEAD_DIM / 8; d++) {
          mfa_operand_tile q_t;
          // the tile's own address and origin 0: Metal leaves unspecified how an origin combines with a transpose
          mfa_load_operand(q_t, q_tile + c * 8 * MFA_HEAD_DIM + d * 8, MFA_HEAD_DIM, true, lane);
          simdgroup_multiply_accumulate(s_tile, k_row_tiles.tile(d), q_t, s_tile);
        }
        thread float2& s = s_tile.thread_elements();
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DK
        simdgroup_float8x8 dp_tile = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        #pragma clang loop unroll(full)
        for (uint d = 0; d < MFA_VALUE_DIM / 8; d++) {
          mfa_operand_tile do_t;
#if MFA_DP_FROM_DEVICE
          mfa_load_device_operand_transposed(do_t, do_rows + (query0 + long(c) * 8) * p.value_dim, p.value_dim,
                                             queries - int(c) * 8, p.value_dim, d, lane);
#else
          mfa_load_operand(do_t, do_tile + c * 8 * MFA_VALUE_DIM + d * 8, MFA_VALUE_DIM, true, lane);
#endif
          simdgroup_multiply_accumulate(dp_tile, v_row_tiles.tile(d), do_t, dp_tile);
        }
        thread float2& dp = dp_tile.thread_elements();
#endif
        for (uint t = 0; t < 2; t++) {
          const uint local = c * 8 + tile_col + t;
          const int query = query0 + int(local);
          const AttentionRow row = attention_row(p, sq, seq, head, query, alibi);
          const bool valid = key_valid && query < sq.q_len;
          bool allowed = false;
          const float score =
              valid ? attention_score(s[t], p, row, key, sq.kv_len, mask, mask_bits, inside_band, mask_full, allowed)
                    : MFA_MASKED_SCORE;
          const float prob = attention_probability(score, allowed, softmax_tile[local]);
          const float keep = attention_dropout_factor(p, row, key);
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DK
          const float ds = prob * (dp[t] * keep - delta_tile[local]);
          dp[t] = attention_dot_gradient(ds, s[t], p);
#endif
          s[t] = prob * keep;
        }
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DV
        #pragma clang loop unroll(full)
        for (uint d = 0; d < DV_DIM / 8; d++) {
          mfa_operand_tile do_t;
          mfa_load_operand(do_t, do_tile + c * 8 * DO_TILE_DIM + d * 8, DO_TILE_DIM, false, lane);
          simdgroup_multiply_accumulate(dv_tiles[d], s_tile, do_t, dv_tiles[d]);
        }
#endif
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DK
        #pragma clang loop unroll(full)
        for (uint d = 0; d < DK_DIM / 8; d++) {
          mfa_operand_tile q_t;
          mfa_load_operand(q_t, q_tile + c * 8 * MFA_HEAD_DIM + col0 + d * 8, MFA_HEAD_DIM, false, lane);
          simdgroup_multiply_accumulate(dk_tiles[d], dp_tile, q_t, dk_tiles[d]);
        }
#endif
      }
    }
  }
#if MFA_COUNT_TILES
  if (tid == 0) {
    tile_count[(group.z * groups.y + group.y) * groups.x + group.x] = computed;
  }
#endif
  if (key_valid) {
    // dk and dv are dense: with even dims every row begins on two elements
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DK
    mfa_store_row_tiles<DK_DIM>(dk + kv_row * p.head_dim + col0, dk_tiles, 1.0f, p.head_dim - col0, lane,
                                (p.head_dim & 1u) == 0);
#endif
#if MFA_DKDV_OUTPUTS & MFA_DKDV_DV
    mfa_store_row_tiles<DV_DIM>(dv + kv_row * p.value_dim + col0, dv_tiles, 1.0f, p.value_dim - col0, lane,
                                (p.value_dim & 1u) == 0);
#endif
  }
}
