// Attention backward, dQ: parallel over query blocks, no atomics (each dQ row is written by one threadgroup).
// Recomputes P from Q, K and the forward's softmax stats, then dS = P * (dP - D) with dP = dO V^T, and dQ = dS K.
// With MFA_MASK_GRAD it also writes dS into dmask: the plan takes this path only for masks with every dimension
// full, so each element of dmask belongs to exactly one (row, key).
//
// Grid and row packing as attention_forward: x = blocks of MFA_BLOCK_Q packed query rows (the query heads of one
// GQA group share the K/V tiles), y = K/V head, z = batch (or sequence). A row group of 8 packed rows is owned by
// one SIMD-group, or, where dQ is too wide for one SIMD-group's registers, by SLICES SIMD-groups that each own a
// column slice of dQ (MFA_SLICE_DIM columns) and compute S, dP and dS for half of the block's keys: each multiplies
// its half of the head dims (alternate tiles of Q and K, dO and V) for every key of the block and hands the other its
// partial dot products, and dS meets in threadgroup memory (MFA_SHARED_DS), so each score, its exp and each product is
// computed once and each element of Q and dO read once. The dQ accumulator
// stays in registers, and Q and dO as operand tiles unless the planner streams them from device memory
// (MFA_STREAM_Q, MFA_STREAM_DO: where holding them would take too many registers). K and V are copied into
// threadgroup memory in the input type (as attention_forward): whole and together, or, with slices, each in chunks
// of its head dim (MFA_K_CHUNKS, MFA_V_CHUNKS; K's last chunk stays staged for dQ, earlier ones are staged again).
#include <metal_stdlib>
using namespace metal;
#include "operand_tiles.h"
#include "attention_params.h"
#include "attention_scores.h"
#include "attention_tiles.h"

#if MFA_MASK_KIND == MFA_MASK_NONE
#define MFA_MASK_T uchar
#endif

#define MFA_SLICES ((MFA_HEAD_DIM + MFA_SLICE_DIM - 1) / MFA_SLICE_DIM)
#define MFA_THREADS (MFA_BLOCK_Q / 8 * MFA_SLICES * 32)  // a SIMD-group per row group and slice
#define MFA_SHARED_DS (MFA_SLICE_DIM < MFA_HEAD_DIM)
constant constexpr uint DQ_DIM = MFA_SLICE_DIM;
constant constexpr uint SLICES = MFA_SLICES;
constant constexpr uint THREADS = MFA_THREADS;
static_assert(DQ_DIM % 8 == 0 && DQ_DIM <= MFA_HEAD_DIM, "dQ slices are whole tiles");
#if MFA_SHARED_DS
constant constexpr uint BLOCK_TILES = MFA_BLOCK_K / 8;
constant constexpr uint KEY_TILES = BLOCK_TILES / SLICES;  // a SIMD-group's score tiles of a block
static_assert(SLICES == 2, "a slice's partial products for the other slice's keys have one place: dS's");
// head-dim columns of K and V staged at once (whole tiles; the last chunk may hold fewer)
constant constexpr uint K_CHUNK = (MFA_HEAD_DIM + 8 * MFA_K_CHUNKS - 1) / (8 * MFA_K_CHUNKS) * 8;
constant constexpr uint V_CHUNK = (MFA_VALUE_DIM + 8 * MFA_V_CHUNKS - 1) / (8 * MFA_V_CHUNKS) * 8;
static_assert(KEY_TILES * 8 * SLICES == MFA_BLOCK_K, "every slice computes as many whole key tiles");
#else
static_assert(MFA_K_CHUNKS == 1 && MFA_V_CHUNKS == 1, "one SIMD-group a row group: K and V staged whole");
#endif

// dS from one score tile and its dP tile, into the score tile (the softcap's chain rule and the scale applied), each
// element written to dmask (MFA_MASK_GRAD).
inline void dq_score_gradient(thread simdgroup_float8x8& s_tile, thread simdgroup_float8x8& dp_tile,
                              constant AttentionParams& p, thread const AttentionSequence& sq,
                              thread const AttentionRow& row, bool row_valid, int key_first,
                              device const MFA_MASK_T* mask, device const uint* mask_bits, bool inside_band,
                              bool mask_full, float2 row_softmax, float row_delta, device float* dmask,
                              uint tile_col) {
  thread float2& s = s_tile.thread_elements();
  thread float2& dp = dp_tile.thread_elements();
  for (uint t = 0; t < 2; t++) {
    const int key = key_first + int(tile_col + t);
    bool allowed = false;
    const float score =
        row_valid ? attention_score(s[t], p, row, key, sq.kv_len, mask, mask_bits, inside_band, mask_full, allowed)
                  : MFA_MASKED_SCORE;
    const float prob = attention_probability(score, allowed, row_softmax);
    const float ds = prob * (dp[t] * attention_dropout_factor(p, row, key) - row_delta);
#if MFA_MASK_GRAD
    if (row_valid && key < sq.kv_len) {
      dmask[long(row.batch) * p.mask_strides[0] + long(row.head) * p.mask_strides[1] +
            long(row.query) * p.mask_strides[2] + long(key) * p.mask_strides[3]] = ds;
    }
#endif
    s[t] = attention_dot_gradient(ds, s[t], p);
  }
}

#if MFA_SHARED_DS
// Of a slice's partial products for every key tile of a block (`partial[j]`: key tile (first_tile + j) % BLOCK_TILES,
// its own KEY_TILES first), hands the other slice's to it through their places in `row_tiles` (this row group's 8
// rows of dS, whose last reads are behind a barrier since) and sets `own` to its own plus the other's. `own` may be
// `partial`.
inline void dq_add_partials(thread simdgroup_float8x8* own, thread simdgroup_float8x8* partial,
                            threadgroup float* row_tiles, uint first_tile) {
  #pragma clang loop unroll(full)
  for (uint j = KEY_TILES; j < BLOCK_TILES; j++) {
    simdgroup_store(partial[j], row_tiles + (first_tile + j) % BLOCK_TILES * 8, MFA_BLOCK_K);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  #pragma clang loop unroll(full)
  for (uint j = 0; j < KEY_TILES; j++) {
    simdgroup_float8x8 other;
    simdgroup_load(other, row_tiles + (first_tile + j) * 8, MFA_BLOCK_K);
    own[j].thread_elements() = partial[j].thread_elements() + other.thread_elements();
  }
}
#endif

[[max_total_threads_per_threadgroup(MFA_THREADS)]]
kernel void attention_backward_dq(device const MFA_T* q [[buffer(MFA_ATTN_Q)]],
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
                                  device MFA_T* dq [[buffer(MFA_ATTN_DQ)]],
                                  device float* dmask [[buffer(MFA_ATTN_DMASK)]],
                                  device const uint* mask_bits [[buffer(MFA_ATTN_MASK_BITS)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  uint3 groups [[threadgroups_per_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]]) {
#if MFA_SHARED_DS
  constexpr uint TILE_DIM = K_CHUNK > V_CHUNK ? K_CHUNK : V_CHUNK;
  threadgroup uint4 kv_storage[MFA_BLOCK_K * TILE_DIM * sizeof(MFA_T) / 16];  // 16-byte aligned rows
  threadgroup MFA_T* const kv_tile = reinterpret_cast<threadgroup MFA_T*>(kv_storage);
  // the block's dS, row-major; first each slice's partial dP, then S, for the other's keys
  threadgroup float ds_tile[MFA_BLOCK_Q * MFA_BLOCK_K];
#else
  threadgroup uint4 k_storage[MFA_BLOCK_K * MFA_HEAD_DIM * sizeof(MFA_T) / 16];  // 16-byte aligned rows
  threadgroup MFA_T* const k_tile = reinterpret_cast<threadgroup MFA_T*>(k_storage);
  threadgroup uint4 v_storage[MFA_BLOCK_K * MFA_VALUE_DIM * sizeof(MFA_T) / 16];
  threadgroup MFA_T* const v_tile = reinterpret_cast<threadgroup MFA_T*>(v_storage);
#endif
  const uint seq = group.z, kv_head = group.y, G = p.group;
  const AttentionSequence sq = attention_sequence(p, seq, cu_q, cu_k);
  const int packed_rows = sq.q_len * int(G);
  const int row0 = int(group.x) * MFA_BLOCK_Q;
  if (row0 >= packed_rows) return;  // varlen: a shorter sequence than the grid's longest (whole threadgroup)
  const uint row_group = sg / SLICES, slice = sg % SLICES;
  const uint dq_col0 = slice * DQ_DIM;  // this slice's first column of dQ (< head_dim: see SLICES)
#if MFA_SHARED_DS
  const uint first_tile = slice * KEY_TILES;  // this slice's first score tile of a block
#endif
  const int q_first = row0 / int(G), q_last = (min(row0 + MFA_BLOCK_Q, packed_rows) - 1) / int(G);
  const int2 band = attention_key_band(p, sq, q_first, q_last);
  const int block_begin = band.x / MFA_BLOCK_K;
  const int block_end = band.x <= band.y ? band.y / MFA_BLOCK_K + 1 : block_begin;

  const uint tile_col = mfa_tile_col(lane);
  const int packed = row0 + int(row_group * 8 + mfa_tile_row(lane));
  const bool row_valid = packed < packed_rows;
  const AttentionRow row = attention_row(p, sq, seq, kv_head * G + uint(packed) % G, row_valid ? packed / int(G) : 0,
                                         alibi);
  // q, k and v are read through their strides; stats, delta, grad_out and dq are dense, q_row is this row's index.
  const long q_row = (long(sq.tensor_batch) * p.q_heads + row.head) * p.q_len + sq.q_first + row.query;
  const mfa_strided_rows<MFA_T> k_rows{
      k + attention_row_offset(p.k_strides, sq.tensor_batch, kv_head, sq.k_first), p.k_strides[2]};
  const mfa_strided_rows<MFA_T> v_rows{
      v + attention_row_offset(p.v_strides, sq.tensor_batch, kv_head, sq.k_first), p.v_strides[2]};
  const bool wide_k = p.wide_rows & 2u, wide_v = p.wide_rows & 4u;
  const float2 row_softmax = attention_row_softmax(row_valid ? stats[q_row] : float2(0.0f));
  const float row_delta = row_valid ? delta[q_row] : 0.0f;

  // this slice's tiles of the row (every tile without slices)
  const mfa_row_operand<MFA_HEAD_DIM, MFA_STREAM_Q, SLICES> q_row_tiles(
      q + attention_row_offset(p.q_strides, sq.tensor_batch, row.head, sq.q_first + row.query), row_valid, p.head_dim,
      lane, p.wide_rows & 1u, slice);
  const mfa_row_operand<MFA_VALUE_DIM, MFA_STREAM_DO, SLICES> do_row_tiles(
      grad_out + q_row * p.value_dim, row_valid, p.value_dim, lane, p.wide_rows & 8u, slice);
  simdgroup_float8x8 dq_tiles[DQ_DIM / 8];
  #pragma clang loop unroll(full)
  for (uint d = 0; d < DQ_DIM / 8; d++) dq_tiles[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

#if MFA_COUNT_TILES
  uint computed = 0;  // key blocks computed (MFA_COUNT_TILES)
#endif
  for (int block = block_begin; block < block_end; block++) {
    const int key0 = block * MFA_BLOCK_K, keys = min(MFA_BLOCK_K, sq.kv_len - key0);
    bool mask_full = false;
#if MFA_MASK_KIND == MFA_MASK_BLOCKS
    const int cover = attention_blocks_cover(p, mask, seq, kv_head * G, G, q_first, q_last, key0, key0 + keys - 1);
    if (cover == MFA_BLOCK_EMPTY) continue;  // the same for every thread: the block is never loaded
    mask_full = cover == MFA_BLOCK_FULL;
#endif
#if MFA_COUNT_TILES
    computed++;
#endif
    const bool inside_band = attention_inside_band(p, sq, q_first, q_last, key0, key0 + MFA_BLOCK_K - 1);
#if MFA_SHARED_DS
    // dP = dO V^T and then S = Q K^T, V and then K staged a chunk of columns at a time: each slice multiplies its
    // tiles of the head dims for every key tile of the block, tile j being key tile (first_tile + j) % BLOCK_TILES
    // (its own first), and adds the other slice's partial products for its own key tiles
    simdgroup_float8x8 dp_tiles[KEY_TILES];
    {
      simdgroup_float8x8 partial_dp[BLOCK_TILES];
      #pragma clang loop unroll(full)
      for (uint j = 0; j < BLOCK_TILES; j++) partial_dp[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      #pragma clang loop unroll(full)
      for (uint d0 = 0; d0 < MFA_VALUE_DIM; d0 += V_CHUNK) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous block's dQ (or V chunk) is done
        mfa_copy_rows<MFA_BLOCK_K, V_CHUNK, V_CHUNK, THREADS>(kv_tile, v_rows.starting_at(key0).from_column(d0),
                                                              keys, p.value_dim - d0, tid, wide_v);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        #pragma clang loop unroll(full)
        for (uint d = d0 / 8; d < min(d0 + V_CHUNK, uint(MFA_VALUE_DIM)) / 8; d++) {
          if (d % SLICES != slice) continue;  // the other slice's tile (the same in the SIMD-group)
          const thread mfa_operand_tile& do_t = do_row_tiles.tile(d);  // a reference: a held tile is not copied
          #pragma clang loop unroll(full)
          for (uint j = 0; j < BLOCK_TILES; j++) {
            mfa_operand_tile v_t;
            // the tile's own address and origin 0: Metal leaves unspecified how an origin combines with a transpose
            mfa_load_operand(v_t, kv_tile + (first_tile + j) % BLOCK_TILES * 8 * V_CHUNK + d * 8 - d0, V_CHUNK, true,
                             lane);
            simdgroup_multiply_accumulate(partial_dp[j], do_t, v_t, partial_dp[j]);
          }
        }
      }
      dq_add_partials(dp_tiles, partial_dp, ds_tile + row_group * 8 * MFA_BLOCK_K, first_tile);
    }
    simdgroup_float8x8 s_tiles[BLOCK_TILES];  // this slice's own KEY_TILES (after the partials are added) first
    #pragma clang loop unroll(full)
    for (uint j = 0; j < BLOCK_TILES; j++) s_tiles[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    #pragma clang loop unroll(full)
    for (uint d0 = 0; d0 < MFA_HEAD_DIM; d0 += K_CHUNK) {
      threadgroup_barrier(mem_flags::mem_threadgroup);  // the V (or K) chunk is consumed, and dP's partials read
      mfa_copy_rows<MFA_BLOCK_K, K_CHUNK, K_CHUNK, THREADS>(kv_tile, k_rows.starting_at(key0).from_column(d0), keys,
                                                            p.head_dim - d0, tid, wide_k);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      #pragma clang loop unroll(full)
      for (uint d = d0 / 8; d < min(d0 + K_CHUNK, uint(MFA_HEAD_DIM)) / 8; d++) {
        if (d % SLICES != slice) continue;
        const thread mfa_operand_tile& q_t = q_row_tiles.tile(d);
        #pragma clang loop unroll(full)
        for (uint j = 0; j < BLOCK_TILES; j++) {
          mfa_operand_tile k_t;
          mfa_load_operand(k_t, kv_tile + (first_tile + j) % BLOCK_TILES * 8 * K_CHUNK + d * 8 - d0, K_CHUNK, true,
                           lane);
          simdgroup_multiply_accumulate(s_tiles[j], q_t, k_t, s_tiles[j]);
        }
      }
    }
    dq_add_partials(s_tiles, s_tiles, ds_tile + row_group * 8 * MFA_BLOCK_K, first_tile);
    #pragma clang loop unroll(full)
    for (uint j = 0; j < KEY_TILES; j++) {
      dq_score_gradient(s_tiles[j], dp_tiles[j], p, sq, row, row_valid, key0 + int((first_tile + j) * 8), mask,
                        mask_bits, inside_band, mask_full, row_softmax, row_delta, dmask, tile_col);
      simdgroup_store(s_tiles[j], ds_tile + row_group * 8 * MFA_BLOCK_K + (first_tile + j) * 8, MFA_BLOCK_K);
    }
    // dQ += dS K over every key of the block, this slice's columns: K's chunks from the last (still staged) down
    #pragma clang loop unroll(full)
    for (uint c = MFA_K_CHUNKS; c-- > 0;) {
      const uint d0 = c * K_CHUNK;
      if (c + 1 < MFA_K_CHUNKS) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the later chunk is consumed
        mfa_copy_rows<MFA_BLOCK_K, K_CHUNK, K_CHUNK, THREADS>(kv_tile, k_rows.starting_at(key0).from_column(d0),
                                                              keys, p.head_dim - d0, tid, wide_k);
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);  // the chunk (and, first, every slice's dS) is in place
      if (dq_col0 >= d0 + K_CHUNK || dq_col0 + DQ_DIM <= d0) continue;  // none of this slice's columns (uniform)
      #pragma clang loop unroll(full)
      for (uint j = 0; j < MFA_BLOCK_K / 8; j++) {
        simdgroup_float8x8 ds_t;
        simdgroup_load(ds_t, ds_tile + row_group * 8 * MFA_BLOCK_K + j * 8, MFA_BLOCK_K);
        #pragma clang loop unroll(full)
        for (uint d = 0; d < DQ_DIM / 8; d++) {
          const uint col = dq_col0 + d * 8;  // the same for the SIMD-group
          if (col < d0 || col >= d0 + K_CHUNK || col >= MFA_HEAD_DIM) continue;
          mfa_operand_tile k_t;
          mfa_load_operand(k_t, kv_tile + j * 8 * K_CHUNK + col - d0, K_CHUNK, false, lane);
          simdgroup_multiply_accumulate(dq_tiles[d], ds_t, k_t, dq_tiles[d]);
        }
      }
    }
#else
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous tiles are consumed
    mfa_copy_rows<MFA_BLOCK_K, MFA_HEAD_DIM, MFA_HEAD_DIM, THREADS>(k_tile, k_rows.starting_at(key0), keys,
                                                                    p.head_dim, tid, wide_k);
    mfa_copy_rows<MFA_BLOCK_K, MFA_VALUE_DIM, MFA_VALUE_DIM, THREADS>(v_tile, v_rows.starting_at(key0), keys,
                                                                      p.value_dim, tid, wide_v);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint j = 0; j < MFA_BLOCK_K / 8; j++) {
      simdgroup_float8x8 s_tile = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      simdgroup_float8x8 dp_tile = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      #pragma clang loop unroll(full)
      for (uint d = 0; d < MFA_HEAD_DIM / 8; d++) {
        mfa_operand_tile k_t;
        // the tile's own address and origin 0: Metal leaves unspecified how an origin combines with a transpose
        mfa_load_operand(k_t, k_tile + j * 8 * MFA_HEAD_DIM + d * 8, MFA_HEAD_DIM, true, lane);
        simdgroup_multiply_accumulate(s_tile, q_row_tiles.tile(d), k_t, s_tile);
      }
      #pragma clang loop unroll(full)
      for (uint d = 0; d < MFA_VALUE_DIM / 8; d++) {
        mfa_operand_tile v_t;
        mfa_load_operand(v_t, v_tile + j * 8 * MFA_VALUE_DIM + d * 8, MFA_VALUE_DIM, true, lane);
        simdgroup_multiply_accumulate(dp_tile, do_row_tiles.tile(d), v_t, dp_tile);
      }
      dq_score_gradient(s_tile, dp_tile, p, sq, row, row_valid, key0 + int(j * 8), mask, mask_bits, inside_band,
                        mask_full, row_softmax, row_delta, dmask, tile_col);
      #pragma clang loop unroll(full)
      for (uint d = 0; d < DQ_DIM / 8; d++) {
        mfa_operand_tile k_t;
        mfa_load_operand(k_t, k_tile + j * 8 * MFA_HEAD_DIM + d * 8, MFA_HEAD_DIM, false, lane);
        simdgroup_multiply_accumulate(dq_tiles[d], s_tile, k_t, dq_tiles[d]);
      }
    }
#endif
  }
#if MFA_COUNT_TILES
  if (tid == 0) tile_count[(group.z * groups.y + group.y) * groups.x + group.x] = computed;
#endif
  if (row_valid)  // dq is dense: with an even head dim every row begins on two elements
    mfa_store_row_tiles<DQ_DIM>(dq + q_row * p.head_dim + dq_col0, dq_tiles, 1.0f, p.head_dim - dq_col0, lane,
                                (p.head_dim & 1u) == 0);
}
