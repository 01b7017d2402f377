// Attention backward, dK and dV: parallel over key blocks, no atomics. A threadgroup owns MFA_BLOCK_KV keys of one
// K/V head and loops over every query head of its GQA group and every query block in the causal/window band, so the
// group's sum lands in registers and each dK/dV row is written once, in a fixed order (deterministic).
// With a block mask (MFA_MASK_BLOCKS) the query blocks are walked from the key block's q-side lists
// (MFA_ATTN_MASK_Q_LISTS): empty blocks are skipped unread.
// Per query block: S^T = K Q^T, P^T from the forward's softmax stats, dV += (P^T * dropout) dO, dP^T = V dO^T,
// dS^T = P^T * (dP^T - D), dK += dS^T Q (with the softcap chain rule and the scale).
//
// Grid: x = key blocks, y = K/V head, z = batch (or sequence). A row group of 8 keys is owned by one SIMD-group, or,
// where dK and dV are too wide for one SIMD-group's registers, by MFA_SLICES SIMD-groups that each own a column
// slice of both and compute S^T and dP^T for 1/MFA_SLICES of the block's queries: P^T and then dS^T meet in
// threadgroup memory (MFA_SHARED_SCORES), so each score, its exp and each product is computed once. The dK/dV
// accumulators stay in registers, and K and V as operand tiles unless the planner streams them from device memory
// (MFA_STREAM_K, MFA_STREAM_V). Q and dO of the current query block (in the input type, as attention_forward copies
// K and V), its softmax max and 1 / sum, and D are staged in threadgroup memory: Q and dO whole, or, with slices,
// each in chunks of its head dim (MFA_Q_CHUNKS, MFA_DO_CHUNKS; each dO chunk serves dP^T and dV, Q is staged again
// for dK).
#include <metal_stdlib>
using namespace metal;
#include "operand_tiles.h"
#include "attention_params.h"
#include "attention_scores.h"
#include "attention_tiles.h"

#if MFA_MASK_KIND == MFA_MASK_NONE
#define MFA_MASK_T uchar
#endif

#define MFA_THREADS (MFA_BLOCK_KV / 8 * MFA_SLICES * 32)  // a SIMD-group per row group and slice
#define MFA_SHARED_SCORES (MFA_SLICES > 1)
constant constexpr uint SLICES = MFA_SLICES;
constant constexpr uint THREADS = MFA_THREADS;
// each slice's columns of dK and dV (whole tiles; the last slices may hold fewer, or none)
constant constexpr uint DK_DIM = (MFA_HEAD_DIM + 8 * SLICES - 1) / (8 * SLICES) * 8;
constant constexpr uint DV_DIM = (MFA_VALUE_DIM + 8 * SLICES - 1) / (8 * SLICES) * 8;
#if MFA_SHARED_SCORES
constant constexpr uint QUERY_TILES = MFA_BLOCK_Q / 8 / SLICES;  // a SIMD-group's score tiles of a block
// head-dim columns of Q and dO staged at once (whole tiles; the last chunk may hold fewer)
constant constexpr uint Q_CHUNK = (MFA_HEAD_DIM + 8 * MFA_Q_CHUNKS - 1) / (8 * MFA_Q_CHUNKS) * 8;
constant constexpr uint DO_CHUNK = (MFA_VALUE_DIM + 8 * MFA_DO_CHUNKS - 1) / (8 * MFA_DO_CHUNKS) * 8;
static_assert(QUERY_TILES * 8 * SLICES == MFA_BLOCK_Q, "every slice computes as many whole query tiles");
#else
static_assert(MFA_Q_CHUNKS == 1 && MFA_DO_CHUNKS == 1, "one SIMD-group a row group: Q and dO staged whole");
#endif

// The probability of one score from its raw dot product (0 outside the sequences and where masked).
inline float dkdv_probability(float dot, constant AttentionParams& p, thread const AttentionSequence& sq,
                              thread const AttentionRow& row, int key, bool key_valid, device const MFA_MASK_T* mask,
                              device const uint* mask_bits, bool inside_band, bool mask_full, float2 row_softmax) {
  const bool valid = key_valid && row.query < sq.q_len;
  bool allowed = false;
  const float score =
      valid ? attention_score(dot, p, row, key, sq.kv_len, mask, mask_bits, inside_band, mask_full, allowed)
            : MFA_MASKED_SCORE;
  return attention_probability(score, allowed, row_softmax);
}

// P^T * dropout into the score tile and dS^T (the softcap's chain rule and the scale applied) into the dP tile, for
// the 8 queries of the block from `local_first` on.
inline void dkdv_score_gradient(thread simdgroup_float8x8& s_tile, thread simdgroup_float8x8& dp_tile,
                                constant AttentionParams& p, thread const AttentionSequence& sq, uint seq, uint head,
                                int query0, uint local_first, int key, bool key_valid, device const float* alibi,
                                device const MFA_MASK_T* mask, device const uint* mask_bits, bool inside_band,
                                bool mask_full, threadgroup const float2* softmax_tile,
                                threadgroup const float* delta_tile, uint tile_col) {
  thread float2& s = s_tile.thread_elements();
  thread float2& dp = dp_tile.thread_elements();
  for (uint t = 0; t < 2; t++) {
    const uint local = local_first + tile_col + t;
    const AttentionRow row = attention_row(p, sq, seq, head, query0 + int(local), alibi);
    const float prob = dkdv_probability(s[t], p, sq, row, key, key_valid, mask, mask_bits, inside_band, mask_full,
                                        softmax_tile[local]);
    const float keep = attention_dropout_factor(p, row, key);
    dp[t] = attention_dot_gradient(prob * (dp[t] * keep - delta_tile[local]), s[t], p);
    s[t] = prob * keep;
  }
}

#if MFA_SHARED_SCORES
// The same in two steps, so that P^T * dropout can be shared before dP^T is computed: the probabilities into
// `p_tile` (the raw dot products stay in the score tile) with P^T * dropout stored at `shared` (row stride
// MFA_BLOCK_Q), ...
inline void dkdv_shared_probabilities(thread simdgroup_float8x8& s_tile, thread simdgroup_float8x8& p_tile,
                                      threadgroup float* shared, constant AttentionParams& p,
                                      thread const AttentionSequence& sq, uint seq, uint head, int query0,
                                      uint local_first, int key, bool key_valid, device const float* alibi,
                                      device const MFA_MASK_T* mask, device const uint* mask_bits, bool inside_band,
                                      bool mask_full, threadgroup const float2* softmax_tile, uint tile_col) {
  simdgroup_float8x8 kept;
  for (uint t = 0; t < 2; t++) {
    const uint local = local_first + tile_col + t;
    const AttentionRow row = attention_row(p, sq, seq, head, query0 + int(local), alibi);
    const float prob = dkdv_probability(s_tile.thread_elements()[t], p, sq, row, key, key_valid, mask, mask_bits,
                                        inside_band, mask_full, softmax_tile[local]);
    p_tile.thread_elements()[t] = prob;
    kept.thread_elements()[t] = prob * attention_dropout_factor(p, row, key);
  }
  simdgroup_store(kept, shared + local_first, MFA_BLOCK_Q);
}

// ... then, once dP^T is complete, dS^T into the dP tile.
inline void dkdv_shared_gradients(thread simdgroup_float8x8& dp_tile, thread simdgroup_float8x8& s_tile,
                                  thread simdgroup_float8x8& p_tile, constant AttentionParams& p,
                                  thread const AttentionSequence& sq, uint seq, uint head, int query0,
                                  uint local_first, int key, device const float* alibi,
                                  threadgroup const float* delta_tile, uint tile_col) {
  thread float2& dp = dp_tile.thread_elements();
  for (uint t = 0; t < 2; t++) {
    const uint local = local_first + tile_col + t;
    const AttentionRow row = attention_row(p, sq, seq, head, query0 + int(local), alibi);
    const float ds = p_tile.thread_elements()[t] * (dp[t] * attention_dropout_factor(p, row, key) - delta_tile[local]);
    dp[t] = attention_dot_gradient(ds, s_tile.thread_elements()[t], p);
  }
}
#endif

[[max_total_threads_per_threadgroup(MFA_THREADS)]]
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
#if MFA_SHARED_SCORES
  constexpr uint TILE_DIM = Q_CHUNK > DO_CHUNK ? Q_CHUNK : DO_CHUNK;
  threadgroup uint4 qdo_storage[MFA_BLOCK_Q * TILE_DIM * sizeof(MFA_T) / 16];  // 16-byte aligned rows
  threadgroup MFA_T* const qdo_tile = reinterpret_cast<threadgroup MFA_T*>(qdo_storage);
  threadgroup float scores_tile[MFA_BLOCK_KV * MFA_BLOCK_Q];  // the block's P^T, then its dS^T, row-major
#else
  threadgroup uint4 q_storage[MFA_BLOCK_Q * MFA_HEAD_DIM * sizeof(MFA_T) / 16];  // 16-byte aligned rows
  threadgroup MFA_T* const q_tile = reinterpret_cast<threadgroup MFA_T*>(q_storage);
  threadgroup uint4 do_storage[MFA_BLOCK_Q * MFA_VALUE_DIM * sizeof(MFA_T) / 16];
  threadgroup MFA_T* const do_tile = reinterpret_cast<threadgroup MFA_T*>(do_storage);
#endif
  threadgroup float2 softmax_tile[MFA_BLOCK_Q];  // (max, 1 / sum)
  threadgroup float delta_tile[MFA_BLOCK_Q];
  const uint seq = group.z, kv_head = group.y, G = p.group;
  const AttentionSequence sq = attention_sequence(p, seq, cu_q, cu_k);
  const int key0 = int(group.x) * MFA_BLOCK_KV;
  if (key0 >= sq.kv_len) return;  // varlen: a shorter sequence than the grid's longest (whole threadgroup)
  const int key_last = min(key0 + MFA_BLOCK_KV, sq.kv_len) - 1;
  const int2 band = attention_query_band(p, sq, key0, key_last);
  const int block_begin = band.x / MFA_BLOCK_Q;
  const int block_end = band.x <= band.y ? band.y / MFA_BLOCK_Q + 1 : block_begin;
  const uint row_group = sg / SLICES, slice = sg % SLICES;
  const uint dk_col0 = slice * DK_DIM, dv_col0 = slice * DV_DIM;  // this slice's first columns (0 without slices)
#if MFA_SHARED_SCORES
  const uint first_tile = slice * QUERY_TILES;  // this slice's first score tile of a block
#endif

  // This lane's key (its row in the 8x8 tiles) and its two query columns.
  const uint tile_col = mfa_tile_col(lane);
  const int key = key0 + int(row_group) * 8 + int(mfa_tile_row(lane));
  const bool key_valid = key < sq.kv_len;
  // q, k and v are read through their strides; stats, delta, grad_out, dk and dv are dense, kv_row is this key's
  // index in dk and dv.
  const long kv_row = (long(sq.tensor_batch) * p.kv_heads + kv_head) * p.kv_len + sq.k_first + key;
  const mfa_row_operand<MFA_HEAD_DIM, MFA_STREAM_K> k_row_tiles(
      k + attention_row_offset(p.k_strides, sq.tensor_batch, kv_head, sq.k_first + key), key_valid, p.head_dim, lane,
      p.wide_rows & 2u);
  const mfa_row_operand<MFA_VALUE_DIM, MFA_STREAM_V> v_row_tiles(
      v + attention_row_offset(p.v_strides, sq.tensor_batch, kv_head, sq.k_first + key), key_valid, p.value_dim, lane,
      p.wide_rows & 4u);
  const bool wide_q = p.wide_rows & 1u, wide_do = p.wide_rows & 8u;
  simdgroup_float8x8 dk_tiles[DK_DIM / 8], dv_tiles[DV_DIM / 8];
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DK_DIM / 8; d++) dk_tiles[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DV_DIM / 8; d++) dv_tiles[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

#if MFA_COUNT_TILES
  uint computed = 0;  // query blocks computed, over the group's heads (MFA_COUNT_TILES)
#endif
  for (uint g = 0; g < G; g++) {
    const uint head = kv_head * G + g;
    const long head_base = (long(sq.tensor_batch) * p.q_heads + head) * p.q_len + sq.q_first;
    const mfa_strided_rows<MFA_T> do_rows{grad_out + head_base * p.value_dim, p.value_dim};
    const mfa_strided_rows<MFA_T> q_rows{q + attention_row_offset(p.q_strides, sq.tensor_batch, head, sq.q_first),
                                         p.q_strides[2]};
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
      const bool inside_band = attention_inside_band(p, sq, query0, query0 + MFA_BLOCK_Q - 1, key0, key0 + MFA_BLOCK_KV - 1);
      threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous query block is consumed
      if (tid < MFA_BLOCK_Q) {  // rows past the end attend nothing: 1 / sum = 0 makes their probabilities 0
        softmax_tile[tid] = attention_row_softmax(int(tid) < queries ? stats[head_base + query0 + tid] : float2(0.0f));
        delta_tile[tid] = int(tid) < queries ? delta[head_base + query0 + tid] : 0.0f;
      }
#if MFA_SHARED_SCORES
      // S^T = K Q^T over this slice's query tiles, Q staged a chunk of columns at a time
      simdgroup_float8x8 s_tiles[QUERY_TILES], p_tiles[QUERY_TILES], dp_tiles[QUERY_TILES];
      #pragma clang loop unroll(full)
      for (uint j = 0; j < QUERY_TILES; j++) {
        s_tiles[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        dp_tiles[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      }
      #pragma clang loop unroll(full)
      for (uint d0 = 0; d0 < MFA_HEAD_DIM; d0 += Q_CHUNK) {
        if (d0 > 0) threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous Q chunk is consumed
        mfa_copy_rows<MFA_BLOCK_Q, Q_CHUNK, Q_CHUNK, THREADS>(qdo_tile, q_rows.starting_at(query0).from_column(d0),
                                                              queries, p.head_dim - d0, tid, wide_q);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        #pragma clang loop unroll(full)
        for (uint d = d0 / 8; d < min(d0 + Q_CHUNK, uint(MFA_HEAD_DIM)) / 8; d++) {
          const thread mfa_operand_tile& k_t = k_row_tiles.tile(d);  // a reference: a held tile is not copied
          #pragma clang loop unroll(full)
          for (uint j = 0; j < QUERY_TILES; j++) {
            mfa_operand_tile q_t;
            // the tile's own address and origin 0: Metal leaves unspecified how an origin combines with a transpose
            mfa_load_operand(q_t, qdo_tile + (first_tile + j) * 8 * Q_CHUNK + d * 8 - d0, Q_CHUNK, true, lane);
            simdgroup_multiply_accumulate(s_tiles[j], k_t, q_t, s_tiles[j]);
          }
        }
      }
      threadgroup float* const group_scores = scores_tile + row_group * 8 * MFA_BLOCK_Q;  // this row group's keys
      #pragma clang loop unroll(full)
      for (uint j = 0; j < QUERY_TILES; j++) {
        dkdv_shared_probabilities(s_tiles[j], p_tiles[j], group_scores, p, sq, seq, head, query0,
                                  (first_tile + j) * 8, key, key_valid, alibi, mask, mask_bits, inside_band,
                                  mask_full, softmax_tile, tile_col);
      }
      // Each chunk of dO staged once: dP^T = V dO^T over this slice's query tiles, and dV += P^T dO over every query
      // of the block, this slice's columns
      #pragma clang loop unroll(full)
      for (uint d0 = 0; d0 < MFA_VALUE_DIM; d0 += DO_CHUNK) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the Q (or dO) chunk is consumed
        mfa_copy_rows<MFA_BLOCK_Q, DO_CHUNK, DO_CHUNK, THREADS>(
            qdo_tile, do_rows.starting_at(query0).from_column(d0), queries, p.value_dim - d0, tid, wide_do);
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the chunk (and, first, every slice's P^T) is in place
        #pragma clang loop unroll(full)
        for (uint d = d0 / 8; d < min(d0 + DO_CHUNK, uint(MFA_VALUE_DIM)) / 8; d++) {
          const thread mfa_operand_tile& v_t = v_row_tiles.tile(d);
          #pragma clang loop unroll(full)
          for (uint j = 0; j < QUERY_TILES; j++) {
            mfa_operand_tile do_t;
            mfa_load_operand(do_t, qdo_tile + (first_tile + j) * 8 * DO_CHUNK + d * 8 - d0, DO_CHUNK, true, lane);
            simdgroup_multiply_accumulate(dp_tiles[j], v_t, do_t, dp_tiles[j]);
          }
        }
        if (dv_col0 >= d0 + DO_CHUNK || dv_col0 + DV_DIM <= d0) continue;  // none of this slice's columns (uniform)
        #pragma clang loop unroll(full)
        for (uint j = 0; j < MFA_BLOCK_Q / 8; j++) {
          simdgroup_float8x8 p_t;
          simdgroup_load(p_t, group_scores + j * 8, MFA_BLOCK_Q);
          #pragma clang loop unroll(full)
          for (uint d = 0; d < DV_DIM / 8; d++) {
            const uint col = dv_col0 + d * 8;  // the same for the SIMD-group
            if (col < d0 || col >= d0 + DO_CHUNK || col >= MFA_VALUE_DIM) continue;
            mfa_operand_tile do_t;
            mfa_load_operand(do_t, qdo_tile + j * 8 * DO_CHUNK + col - d0, DO_CHUNK, false, lane);
            simdgroup_multiply_accumulate(dv_tiles[d], p_t, do_t, dv_tiles[d]);
          }
        }
      }
      // dK += dS^T Q over every query of the block, this slice's columns: Q's chunks staged again
      threadgroup_barrier(mem_flags::mem_threadgroup);  // every slice's P^T and the last dO chunk are consumed
      #pragma clang loop unroll(full)
      for (uint j = 0; j < QUERY_TILES; j++) {
        dkdv_shared_gradients(dp_tiles[j], s_tiles[j], p_tiles[j], p, sq, seq, head, query0, (first_tile + j) * 8,
                              key, alibi, delta_tile, tile_col);
        simdgroup_store(dp_tiles[j], group_scores + (first_tile + j) * 8, MFA_BLOCK_Q);
      }
      #pragma clang loop unroll(full)
      for (uint d0 = 0; d0 < MFA_HEAD_DIM; d0 += Q_CHUNK) {
        if (d0 > 0) threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous chunk is consumed
        mfa_copy_rows<MFA_BLOCK_Q, Q_CHUNK, Q_CHUNK, THREADS>(qdo_tile, q_rows.starting_at(query0).from_column(d0),
                                                              queries, p.head_dim - d0, tid, wide_q);
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the chunk (and, first, every slice's dS^T) is in place
        if (dk_col0 >= d0 + Q_CHUNK || dk_col0 + DK_DIM <= d0) continue;  // none of this slice's columns (uniform)
        #pragma clang loop unroll(full)
        for (uint j = 0; j < MFA_BLOCK_Q / 8; j++) {
          simdgroup_float8x8 ds_t;
          simdgroup_load(ds_t, group_scores + j * 8, MFA_BLOCK_Q);
          #pragma clang loop unroll(full)
          for (uint d = 0; d < DK_DIM / 8; d++) {
            const uint col = dk_col0 + d * 8;
            if (col < d0 || col >= d0 + Q_CHUNK || col >= MFA_HEAD_DIM) continue;
            mfa_operand_tile q_t;
            mfa_load_operand(q_t, qdo_tile + j * 8 * Q_CHUNK + col - d0, Q_CHUNK, false, lane);
            simdgroup_multiply_accumulate(dk_tiles[d], ds_t, q_t, dk_tiles[d]);
          }
        }
      }
#else
      mfa_copy_rows<MFA_BLOCK_Q, MFA_HEAD_DIM, MFA_HEAD_DIM, THREADS>(q_tile, q_rows.starting_at(query0), queries,
                                                                      p.head_dim, tid, wide_q);
      mfa_copy_rows<MFA_BLOCK_Q, MFA_VALUE_DIM, MFA_VALUE_DIM, THREADS>(do_tile, do_rows.starting_at(query0),
                                                                        queries, p.value_dim, tid, wide_do);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (uint c = 0; c < MFA_BLOCK_Q / 8; c++) {
        simdgroup_float8x8 s_tile = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        #pragma clang loop unroll(full)
        for (uint d = 0; d < MFA_HEAD_DIM / 8; d++) {
          mfa_operand_tile q_t;
          // the tile's own address and origin 0: Metal leaves unspecified how an origin combines with a transpose
          mfa_load_operand(q_t, q_tile + c * 8 * MFA_HEAD_DIM + d * 8, MFA_HEAD_DIM, true, lane);
          simdgroup_multiply_accumulate(s_tile, k_row_tiles.tile(d), q_t, s_tile);
        }
        simdgroup_float8x8 dp_tile = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        #pragma clang loop unroll(full)
        for (uint d = 0; d < MFA_VALUE_DIM / 8; d++) {
          mfa_operand_tile do_t;
          mfa_load_operand(do_t, do_tile + c * 8 * MFA_VALUE_DIM + d * 8, MFA_VALUE_DIM, true, lane);
          simdgroup_multiply_accumulate(dp_tile, v_row_tiles.tile(d), do_t, dp_tile);
        }
        dkdv_score_gradient(s_tile, dp_tile, p, sq, seq, head, query0, c * 8, key, key_valid, alibi, mask,
                            mask_bits, inside_band, mask_full, softmax_tile, delta_tile, tile_col);
        #pragma clang loop unroll(full)
        for (uint d = 0; d < DV_DIM / 8; d++) {
          mfa_operand_tile do_t;
          mfa_load_operand(do_t, do_tile + c * 8 * MFA_VALUE_DIM + d * 8, MFA_VALUE_DIM, false, lane);
          simdgroup_multiply_accumulate(dv_tiles[d], s_tile, do_t, dv_tiles[d]);
        }
        #pragma clang loop unroll(full)
        for (uint d = 0; d < DK_DIM / 8; d++) {
          mfa_operand_tile q_t;
          mfa_load_operand(q_t, q_tile + c * 8 * MFA_HEAD_DIM + d * 8, MFA_HEAD_DIM, false, lane);
          simdgroup_multiply_accumulate(dk_tiles[d], dp_tile, q_t, dk_tiles[d]);
        }
      }
#endif
    }
  }
#if MFA_COUNT_TILES
  if (tid == 0) {
    tile_count[(group.z * groups.y + group.y) * groups.x + group.x] = computed;
  }
#endif
  if (key_valid) {
    // dk and dv are dense: with even dims every row begins on two elements. A slice past a head dim writes nothing.
    if (dk_col0 < MFA_HEAD_DIM)
      mfa_store_row_tiles<DK_DIM>(dk + kv_row * p.head_dim + dk_col0, dk_tiles, 1.0f, p.head_dim - dk_col0, lane,
                                  (p.head_dim & 1u) == 0);
    if (dv_col0 < MFA_VALUE_DIM)
      mfa_store_row_tiles<DV_DIM>(dv + kv_row * p.value_dim + dv_col0, dv_tiles, 1.0f, p.value_dim - dv_col0, lane,
                                  (p.value_dim & 1u) == 0);
  }
}
