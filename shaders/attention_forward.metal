// Fused attention forward (FlashAttention-2 online softmax), one kernel for every feature.
//
// Grid: x = blocks of MFA_BLOCK_Q packed query rows, y = K/V head, z = batch (or sequence) * key splits.
// The query heads of one GQA group are packed into the rows of a threadgroup (row r -> query r / group,
// head kv_head * group + r % group), so each K/V tile is loaded once for the whole group and short queries
// (decoding) still fill the SIMD-groups. A row group of 8 packed rows is owned by one SIMD-group, or, where O is too
// wide for one SIMD-group's registers, by SLICES SIMD-groups that each own a column slice of O (MFA_SLICE_DIM
// columns) and score half of the block's keys: each multiplies its half of the head dim (alternate tiles of Q and K)
// for every key of the block and hands the other its partial scores, and their probabilities (P) meet in threadgroup
// memory, so each product, score and exp is computed once and each Q element read once. O stays in registers as 8x8 float tiles and Q as operand
// tiles (or, MFA_STREAM_Q, is read from device memory at each key block where that would take too many registers);
// K is staged into threadgroup memory in MFA_K_CHUNKS chunks of its head dim and V MFA_V_ROWS keys at a time (16
// bytes per access where their rows allow); operands are taken by the matrix unit in the input type (float for
// bfloat before Apple9).
// Key blocks outside the causal/window band of the threadgroup's rows are never loaded, nor those whose block mask
// blocks (MFA_MASK_BLOCKS, a FlexAttention block mask) are all empty.
//
// Defines (chosen by csrc/attention/forward_plan.cpp): MFA_T (input type), MFA_HEAD_DIM / MFA_VALUE_DIM (E, Ev
// rounded up to 8), MFA_SLICE_DIM (columns of O per SIMD-group), MFA_BLOCK_Q (8 * row groups), MFA_BLOCK_K,
// MFA_K_CHUNKS (into whole tiles), MFA_V_ROWS (divides MFA_BLOCK_K), MFA_MASK_KIND with MFA_MASK_T, MFA_SPLIT_KV
// (write float partials for attention_combine), MFA_COUNT_TILES (debug: count computed tiles), MFA_BFLOAT_AS_FLOAT,
// MFA_STREAM_Q, MFA_SINKS (each row's softmax takes its head's sink; split-KV: the combine adds it), MFA_PAGED_KV (k
// and v are paged caches read through a block table, attention_pages.h).
#include <metal_stdlib>
using namespace metal;
#include "operand_tiles.h"
#include "attention_params.h"
#include "attention_pages.h"
#include "attention_scores.h"
#include "attention_tiles.h"

#if MFA_MASK_KIND == MFA_MASK_NONE
#define MFA_MASK_T uchar
#endif
#if MFA_SPLIT_KV
#define MFA_OUT_T float
#else
#define MFA_OUT_T MFA_T
#endif

#define MFA_SLICES ((MFA_VALUE_DIM + MFA_SLICE_DIM - 1) / MFA_SLICE_DIM)
#define MFA_THREADS (MFA_BLOCK_Q / 8 * MFA_SLICES * 32)  // a SIMD-group per row group and slice
constant constexpr uint OUT_DIM = MFA_SLICE_DIM;  // a slice of O: one SIMD-group's columns
constant constexpr uint SLICES = MFA_SLICES;
constant constexpr uint THREADS = MFA_THREADS;
constant constexpr uint BLOCK_TILES = MFA_BLOCK_K / 8;
constant constexpr uint KEY_TILES = BLOCK_TILES / SLICES;  // a SIMD-group's score tiles: its share of the keys
constant constexpr uint V_STRIDE = SLICES * OUT_DIM;            // a staged V row: every slice's columns
// head-dim columns of K staged at once (whole tiles; the last chunk may hold fewer: staged_k_chunk_width)
constant constexpr uint K_CHUNK = (MFA_HEAD_DIM + 8 * MFA_K_CHUNKS - 1) / (8 * MFA_K_CHUNKS) * 8;
constant constexpr uint TILE_ELEMENTS =
    MFA_BLOCK_K * K_CHUNK > MFA_V_ROWS * V_STRIDE ? MFA_BLOCK_K * K_CHUNK : MFA_V_ROWS * V_STRIDE;
static_assert(OUT_DIM % 8 == 0 && OUT_DIM <= MFA_VALUE_DIM, "O slices are whole tiles");
static_assert(KEY_TILES * 8 * SLICES == MFA_BLOCK_K, "every slice scores as many whole key tiles");
static_assert(K_CHUNK * (MFA_K_CHUNKS - 1) < MFA_HEAD_DIM, "every chunk of K holds columns");
static_assert(MFA_BLOCK_K % MFA_V_ROWS == 0 && MFA_V_ROWS % 8 == 0, "V is staged in whole key tiles");
static_assert(KEY_TILES <= 16, "allowed_keys holds the 2 keys of each of a SIMD-group's 8-key tiles in one uint");
// Slices share P (and their rows' maxima and sums) through threadgroup memory.
#define MFA_SHARED_P (MFA_SLICE_DIM < MFA_VALUE_DIM)
static_assert(SLICES <= 2, "a slice's partial scores for the other slice's keys have one place: P's");

[[max_total_threads_per_threadgroup(MFA_THREADS)]]
kernel void attention_forward(device const MFA_T* q [[buffer(MFA_ATTN_Q)]],
                              device const MFA_T* k [[buffer(MFA_ATTN_K)]],
                              device const MFA_T* v [[buffer(MFA_ATTN_V)]],
                              device const MFA_MASK_T* mask [[buffer(MFA_ATTN_MASK)]],
                              device const float* alibi [[buffer(MFA_ATTN_ALIBI)]],
                              device const int* cu_q [[buffer(MFA_ATTN_CU_Q)]],
                              device const int* cu_k [[buffer(MFA_ATTN_CU_K)]],
                              device MFA_OUT_T* out [[buffer(MFA_ATTN_OUT)]],
                              device float2* stats [[buffer(MFA_ATTN_STATS)]],
                              constant AttentionParams& p [[buffer(MFA_ATTN_PARAMS)]],
                              device uint* tile_count [[buffer(MFA_ATTN_TILE_COUNT)]],
                              device const float* sinks [[buffer(MFA_ATTN_SINKS)]],
                              device const uint* mask_bits [[buffer(MFA_ATTN_MASK_BITS)]],
                              device const int* block_table [[buffer(MFA_ATTN_BLOCK_TABLE)]],
                              device const int* kv_spans [[buffer(MFA_ATTN_KV_SPANS)]],
                              uint3 group [[threadgroup_position_in_grid]],
                              uint3 groups [[threadgroups_per_grid]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]],
                              ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup uint4 kv_storage[TILE_ELEMENTS * sizeof(MFA_T) / 16];  // 16-byte aligned rows
  threadgroup MFA_T* const kv_tile = reinterpret_cast<threadgroup MFA_T*>(kv_storage);
#if MFA_SHARED_P
  // the block's P, row-major, as float (the unshared P's type); first each slice's partial scores for the other's keys
  threadgroup float p_tile[MFA_BLOCK_Q * MFA_BLOCK_K];
  threadgroup float row_parts[MFA_BLOCK_Q * SLICES];    // each slice's block max (and, at the end, partial sum)
#endif
  const bool wide_q = p.wide_rows & 1u, wide_k = p.wide_rows & 2u, wide_v = p.wide_rows & 4u;
  const uint split = group.z % p.num_splits, seq = group.z / p.num_splits, kv_head = group.y;
  const uint G = p.group;

#if MFA_PAGED_KV
  const AttentionSequence sq = attention_paged_sequence(p, seq, cu_q, kv_spans);
#else
  const AttentionSequence sq = attention_sequence(p, seq, cu_q, cu_k);
#endif
  const int packed_rows = sq.q_len * int(G);
  const int row0 = int(group.x) * MFA_BLOCK_Q;
  if (row0 >= packed_rows) return;  // varlen: a shorter sequence than the grid's longest (whole threadgroup)
  const uint row_group = sg / SLICES, slice = sg % SLICES;
  const uint out_col0 = slice * OUT_DIM;  // this slice's first column of O (< value_dim: see SLICES)
  const uint first_tile = slice * KEY_TILES;  // this slice's first score tile of a block

  // Key blocks that some row of this threadgroup may attend, intersected with this split's share of the blocks.
  const int q_first = row0 / int(G), q_last = (min(row0 + MFA_BLOCK_Q, packed_rows) - 1) / int(G);
  const int2 band = attention_key_band(p, sq, q_first, q_last);
  int block_begin = band.x / MFA_BLOCK_K, block_end = band.x <= band.y ? band.y / MFA_BLOCK_K + 1 : block_begin;
  block_begin = max(block_begin, int(split * p.blocks_per_split));
  block_end = min(block_end, int((split + 1) * p.blocks_per_split));

  // This lane's packed row and its two columns in every 8x8 tile (lane layout of facts/metal.md).
  const uint tile_col = mfa_tile_col(lane), local_row = row_group * 8 + mfa_tile_row(lane);
  const int packed = row0 + int(local_row);
  const bool row_valid = packed < packed_rows;
  const AttentionRow row = attention_row(p, sq, seq, kv_head * G + uint(packed) % G, row_valid ? packed / int(G) : 0,
                                         alibi);
  // q, k and v are read through their strides; out and stats are dense, q_row is this row's index in them.
  const long q_row = (long(sq.tensor_batch) * p.q_heads + row.head) * p.q_len + sq.q_first + row.query;
#if MFA_PAGED_KV
  device const int* const pages = block_table + long(seq) * p.max_pages;
  const attention_paged_rows<MFA_T> k_rows{k + kv_head * p.k_strides[1], p.k_strides[0], p.k_strides[2], pages,
                                           int(sq.k_first), int(p.kv_len)};
  const attention_paged_rows<MFA_T> v_rows{v + kv_head * p.v_strides[1], p.v_strides[0], p.v_strides[2], pages,
                                           int(sq.k_first), int(p.kv_len)};
#else
  const mfa_strided_rows<MFA_T> k_rows{
      k + attention_row_offset(p.k_strides, sq.tensor_batch, kv_head, sq.k_first), p.k_strides[2]};
  const mfa_strided_rows<MFA_T> v_rows{
      v + attention_row_offset(p.v_strides, sq.tensor_batch, kv_head, sq.k_first), p.v_strides[2]};
#endif

  const mfa_row_operand<MFA_HEAD_DIM, MFA_STREAM_Q, SLICES> q_row_tiles(  // this slice's tiles of the row
      q + attention_row_offset(p.q_strides, sq.tensor_batch, row.head, sq.q_first + row.query), row_valid, p.head_dim,
      lane, wide_q, slice);
  simdgroup_float8x8 o_tiles[OUT_DIM / 8];
  #pragma clang loop unroll(full)
  for (uint d = 0; d < OUT_DIM / 8; d++) o_tiles[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

  // Online softmax; every lane tracks its own row (the 4 lanes of a row hold equal copies). Scores and the running max
  // stay in natural units and only the difference from the max goes to base 2 (exp2((s - max) * log2 e)): converting
  // the scores themselves would round each one by |s| * 2^-24, independently, and the backward (which recomputes
  // exp(s - lse) from the same scores) would then disagree with this forward by that much per element.
  // Until its first allowed key a row has max MFA_MASKED_SCORE (attention_scores.h: no infinities) and sum 0 (with
  // slices: each slice's sum is over its own keys, added up at the end).
  float row_max = MFA_MASKED_SCORE, row_sum = 0.0f;
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
    // s_tiles[j]: key tile (first_tile + j) % BLOCK_TILES, this slice's own KEY_TILES first (then the other's)
    simdgroup_float8x8 s_tiles[BLOCK_TILES];
    #pragma clang loop unroll(full)
    for (uint j = 0; j < BLOCK_TILES; j++) s_tiles[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    #pragma clang loop unroll(full)
    for (uint d0 = 0; d0 < MFA_HEAD_DIM; d0 += K_CHUNK) {
      threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous V tile (or K chunk) is consumed
      mfa_copy_rows<MFA_BLOCK_K, K_CHUNK, K_CHUNK, THREADS>(
          kv_tile, k_rows.starting_at(key0).from_column(d0), keys, p.head_dim - d0, tid, wide_k);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      // head dim outer: a streamed Q tile is loaded once per block
      #pragma clang loop unroll(full)
      for (uint d = d0 / 8; d < min(d0 + K_CHUNK, uint(MFA_HEAD_DIM)) / 8; d++) {
        if (d % SLICES != slice) continue;  // the other slice's share of the head dim (the same in the SIMD-group)
        const thread mfa_operand_tile& q_t = q_row_tiles.tile(d);  // a reference: a held tile is not copied
        #pragma clang loop unroll(full)
        for (uint j = 0; j < BLOCK_TILES; j++) {
          mfa_operand_tile k_t;
          // the tile's own address and origin 0: Metal leaves unspecified how an origin combines with a transpose
          mfa_load_operand(k_t, kv_tile + (first_tile + j) % BLOCK_TILES * 8 * K_CHUNK + d * 8 - d0, K_CHUNK, true,
                           lane);
          simdgroup_multiply_accumulate(s_tiles[j], q_t, k_t, s_tiles[j]);
        }
      }
    }
#if MFA_SHARED_P
    // Each slice's partial scores for the other's keys go to their places in P (whose last reads, the previous
    // block's P V, are behind the K barriers); each then adds the other's partials to its own.
    #pragma clang loop unroll(full)
    for (uint j = KEY_TILES; j < BLOCK_TILES; j++) {
      simdgroup_store(s_tiles[j], p_tile + row_group * 8 * MFA_BLOCK_K + (first_tile + j) % BLOCK_TILES * 8,
                      MFA_BLOCK_K);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    #pragma clang loop unroll(full)
    for (uint j = 0; j < KEY_TILES; j++) {
      simdgroup_float8x8 partial;
      simdgroup_load(partial, p_tile + row_group * 8 * MFA_BLOCK_K + (first_tile + j) * 8, MFA_BLOCK_K);
      s_tiles[j].thread_elements() += partial.thread_elements();
    }
#endif
    const bool inside_band = attention_inside_band(p, sq, q_first, q_last, key0, key0 + MFA_BLOCK_K - 1);
    float block_max = MFA_MASKED_SCORE;
    uint allowed_keys = 0;  // bit 2 j + t: this lane's key (first_tile + j) * 8 + tile_col + t may be attended
    #pragma clang loop unroll(full)
    for (uint j = 0; j < KEY_TILES; j++) {
      thread float2& s = s_tiles[j].thread_elements();
      for (uint t = 0; t < 2; t++) {
        const int key = key0 + int((first_tile + j) * 8 + tile_col + t);
        bool allowed = false;
        s[t] = row_valid ? attention_score(s[t], p, row, key, sq.kv_len, mask, mask_bits, inside_band, mask_full, allowed)
                         : MFA_MASKED_SCORE;
        allowed_keys |= uint(allowed) << (2 * j + t);
        block_max = max(block_max, s[t]);
      }
    }
    block_max = max(block_max, simd_shuffle_xor(block_max, ushort(1)));
    block_max = max(block_max, simd_shuffle_xor(block_max, ushort(8)));
#if MFA_SHARED_P
    if (tile_col == 0) row_parts[local_row * SLICES + slice] = block_max;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    #pragma clang loop unroll(full)
    for (uint c = 0; c < SLICES; c++) block_max = max(block_max, row_parts[local_row * SLICES + c]);
#endif
    const float new_max = max(row_max, block_max);
    // Before its first allowed key a row has nothing to rescale, and its max is no score.
    const float correction = row_max > MFA_MASKED_SCORE ? attention_exp(row_max, new_max) : 0.0f;
    float block_sum = 0.0f;
    #pragma clang loop unroll(full)
    for (uint j = 0; j < KEY_TILES; j++) {
      thread float2& s = s_tiles[j].thread_elements();
      for (uint t = 0; t < 2; t++) s[t] = (allowed_keys >> (2 * j + t)) & 1u ? attention_exp(s[t], new_max) : 0.0f;
      block_sum += s.x + s.y;
      // the softmax sum counts every probability; dropout only decides which ones reach the output
      for (uint t = 0; t < 2; t++) {
        s[t] *= attention_dropout_factor(p, row, key0 + int((first_tile + j) * 8 + tile_col + t));
      }
#if MFA_SHARED_P
      simdgroup_store(s_tiles[j], p_tile + row_group * 8 * MFA_BLOCK_K + (first_tile + j) * 8, MFA_BLOCK_K);
#endif
    }
    block_sum += simd_shuffle_xor(block_sum, ushort(1));
    block_sum += simd_shuffle_xor(block_sum, ushort(8));
    row_sum = row_sum * correction + block_sum;
    row_max = new_max;
    #pragma clang loop unroll(full)
    for (uint d = 0; d < OUT_DIM / 8; d++) o_tiles[d].thread_elements() *= correction;

    #pragma clang loop unroll(full)
    for (uint v0 = 0; v0 < MFA_BLOCK_K; v0 += MFA_V_ROWS) {
      // every SIMD-group is done with the K chunk (or the previous V rows), and its P is stored
      threadgroup_barrier(mem_flags::mem_threadgroup);
      mfa_copy_rows<MFA_V_ROWS, V_STRIDE, V_STRIDE, THREADS>(kv_tile, v_rows.starting_at(key0 + int(v0)),
                                                             keys - int(v0), p.value_dim, tid, wide_v);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      #pragma clang loop unroll(full)
      for (uint j = v0 / 8; j < (v0 + MFA_V_ROWS) / 8; j++) {
#if MFA_SHARED_P
        simdgroup_float8x8 p_t;
        simdgroup_load(p_t, p_tile + row_group * 8 * MFA_BLOCK_K + j * 8, MFA_BLOCK_K);
#else
        const thread simdgroup_float8x8& p_t = s_tiles[j];
#endif
        #pragma clang loop unroll(full)
        for (uint d = 0; d < OUT_DIM / 8; d++) {
          mfa_operand_tile v_t;
          mfa_load_operand(v_t, kv_tile + (j * 8 - v0) * V_STRIDE + out_col0 + d * 8, V_STRIDE, false, lane);
          simdgroup_multiply_accumulate(o_tiles[d], p_t, v_t, o_tiles[d]);
        }
      }
    }
  }

#if MFA_COUNT_TILES
  if (tid == 0) tile_count[(group.z * groups.y + group.y) * groups.x + group.x] = computed;
#endif
#if MFA_SHARED_P  // the row's sum over every slice's keys (every read of the maxima is behind a V barrier)
  if (tile_col == 0) row_parts[local_row * SLICES + slice] = row_sum;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  row_sum = 0.0f;
  #pragma clang loop unroll(full)
  for (uint c = 0; c < SLICES; c++) row_sum += row_parts[local_row * SLICES + c];
#endif
  if (!row_valid) return;
#if MFA_SINKS && !MFA_SPLIT_KV  // split-KV: the combine adds the sink once per row
  const float sink_correction = attention_add_sink(row_max, row_sum, sinks[row.head]);
  #pragma clang loop unroll(full)
  for (uint d = 0; d < OUT_DIM / 8; d++) o_tiles[d].thread_elements() *= sink_correction;
#endif
  // Rows that attend nothing (or whose scores hold a NaN): output 0 (NaN) and stats (-inf, 0).
  const float inv_sum = attention_inverse_sum(row_sum);
#if MFA_SPLIT_KV
  const long out_row = q_row * p.num_splits + split;  // partials: (B, Hq, Lq, splits, Ev)
#else
  const long out_row = q_row;
#endif
  // out is dense: with an even value dim every row begins on two elements
  mfa_store_row_tiles<OUT_DIM>(out + out_row * p.value_dim + out_col0, o_tiles, inv_sum, p.value_dim - out_col0,
                               lane, (p.value_dim & 1u) == 0);
  if (tile_col == 0 && slice == 0) stats[out_row] = attention_stats(row_max, row_sum);  // one slice writes them
}
