// The host/kernel contract of the attention kernels: one params struct and the buffer indices, included by
// both the Metal sources and the C++ planner (csrc/attention/), so the two can never disagree about layout.
//
// Canonical tensors (see csrc/ops.cpp): q (B, Hq, Lq, E), k (B, Hk, Sk, E), v (B, Hk, Sk, Ev), read through their
// element strides over (batch, head, row) with a dense last dim (views of packed qkv tensors are read in place);
// out (B, Hq, Lq, Ev), softmax stats (B, Hq, Lq, 2) float (each row's max score and sum of exp(score - max)) and
// every gradient contiguous. For varlen calls B = 1 and Lq, Sk are the packed token counts.
#pragma once

#include "portable_types.h"

// Buffer indices ([[buffer(i)]]) of the attention kernels.
#define MFA_ATTN_Q 0
#define MFA_ATTN_K 1
#define MFA_ATTN_V 2
#define MFA_ATTN_MASK 3
#define MFA_ATTN_ALIBI 4
#define MFA_ATTN_CU_Q 5
#define MFA_ATTN_CU_K 6
#define MFA_ATTN_OUT 7            // out in q's dtype, or the float partial outputs of each key split
#define MFA_ATTN_STATS 8          // softmax stats (max, sum) per row, or those of each key split
#define MFA_ATTN_PARAMS 9
#define MFA_ATTN_TILE_COUNT 10    // debug (MFA_COUNT_TILES): key/value tiles computed, one uint per threadgroup
#define MFA_ATTN_PARTIAL_OUT 11   // attention_combine's inputs
#define MFA_ATTN_PARTIAL_STATS 12
// The backward kernels' own buffers (besides q, k, v, mask, alibi, cu_seqlens, out = the forward output, stats).
#define MFA_ATTN_GRAD_OUT 13
#define MFA_ATTN_DELTA 14         // D = rowsum(dO * O), float (B, Hq, Lq)
#define MFA_ATTN_DQ 15
#define MFA_ATTN_DK 16
#define MFA_ATTN_DV 17
#define MFA_ATTN_DMASK 18         // float (B, Hq, L, S) when MFA_MASK_GRAD: the score gradient
#define MFA_ATTN_SINKS 19         // float (Hq,) when MFA_SINKS: attention sinks (forward and combine)
#define MFA_ATTN_MASK_BITS 20     // MFA_MASK_BLOCKS: the partial blocks' bits (mfa_torch/block_masks.py)
#define MFA_ATTN_BLOCK_TABLE 21   // MFA_PAGED_KV: int (sequences, max_pages), each sequence's pages (attention_pages.h)
#define MFA_ATTN_KV_SPANS 22      // MFA_PAGED_KV: int (sequences, 2), each sequence's first cache position and keys
#define MFA_ATTN_MASK_Q_LISTS 23  // MFA_MASK_BLOCKS, dK/dV: int (Bm, Hm, key blocks, 1 + query blocks) dense, the
                                  // states' broadcast (Bm, Hm): per key block, the count of non-empty query blocks,
                                  // then those blocks ascending (block_masks.query_lists)

// Mask kinds (define MFA_MASK_KIND): none, bool (true = attend), float (added to the scores), or a FlexAttention
// block mask: the mask buffer holds an int state per (mask_block_q x mask_block_k) block (MFA_BLOCK_EMPTY,
// MFA_BLOCK_FULL, or the block's index in the MFA_ATTN_MASK_BITS buffer), read through mask_strides over
// (B, Hq, query blocks, key blocks).
#define MFA_MASK_NONE 0
#define MFA_MASK_BOOL 1
#define MFA_MASK_FLOAT 2
#define MFA_MASK_BLOCKS 3
#define MFA_BLOCK_EMPTY (-1)
#define MFA_BLOCK_FULL (-2)

// MFA_SCORE_FEATURES: the score features a variant compiles in, a sum of the bits below (the planner sets them from
// the call). A feature that is off is absent from the variant's code, so it costs nothing.
#define MFA_SCORE_SOFTCAP 1
#define MFA_SCORE_ALIBI 2
#define MFA_SCORE_DROPOUT 4

// MFA_SINKS (forward and split-KV combine): 1 when every row's softmax takes one more logit, the sink of its query
// head, with no value vector. The stats then include it, so the backward kernels need nothing of it.

// The largest head dims the kernels take: E to 576 (DeepSeek's absorbed latent attention: 512 latent + 64 rotary),
// Ev to 512.
#define MFA_ATTN_MAX_HEAD_DIM 576
#define MFA_ATTN_MAX_VALUE_DIM 512

// MFA_SLICE_DIM (forward, dQ) and MFA_SLICES (dK/dV): where a whole accumulator (O, dQ, or dK and dV) would take
// too many registers, the planner cuts it into column slices, SIMD-groups of one threadgroup that share the block's
// scores through threadgroup memory (see each kernel).

struct AttentionParams {
  mfa_i64 mask_strides[4];  // element strides of the mask over (B, Hq, L, S) (block states: see MFA_MASK_BLOCKS); 0 on
                            // broadcast dims
  mfa_i64 q_strides[3];     // element strides of q over (B, Hq, Lq); its last dim has stride 1
  mfa_i64 k_strides[3];     // of k over (B, Hk, Sk)
  mfa_i64 v_strides[3];     // of v over (B, Hk, Sk)
  mfa_i64 dropout_offset;   // the counter of element (0, 0, 0, 0)
  mfa_u32 batch;            // B, or the number of sequences for varlen calls
  mfa_u32 q_heads;          // Hq
  mfa_u32 kv_heads;         // Hk
  mfa_u32 group;            // Hq / Hk: the query heads sharing one K/V head, packed into one threadgroup
  mfa_u32 q_len;            // Lq of the q tensor (varlen: packed tokens)
  mfa_u32 kv_len;           // Sk of the k tensor (varlen: packed tokens; MFA_PAGED_KV: rows per page)
  mfa_u32 head_dim;         // E
  mfa_u32 value_dim;        // Ev
  mfa_i32 window_left;      // query i attends keys i + offset - left ..= i + offset + right; -1 = unbounded
  mfa_i32 window_right;
  mfa_u32 bottom_right;     // offset = S - L (FlashAttention) instead of 0 (sdpa)
  mfa_u32 varlen;           // cu_seqlens give each sequence's tokens
  mfa_u32 alibi_batch_stride;  // 0 when the slopes are shared by the batch
  float scale;
  float softcap;            // with MFA_SCORE_SOFTCAP
  mfa_u32 dropout_threshold;  // drop when the 32-bit hash is below p * 2^32
  mfa_u32 dropout_key_lo;     // the mixed seed (see dropout_rng.h)
  mfa_u32 dropout_key_hi;
  float dropout_scale;        // 1 / (1 - p)
  mfa_u32 dropout_rows;       // the counter's (rows, cols) per (batch, head): L, S (varlen: max_seqlen_q, max_seqlen_k)
  mfa_u32 dropout_cols;
  mfa_u32 num_splits;         // key splits per (batch, kv head, query block); > 1 writes partials for attention_combine
  mfa_u32 blocks_per_split;   // key blocks per split
  mfa_u32 max_seqlen_q;       // varlen: longest sequence (the combine grid); else Lq
  mfa_u32 wide_rows;          // bit 0 q, 1 k, 2 v, 3 grad_out: each row begins on 16 bytes, holds whole 16-byte chunks
  mfa_u32 mask_block_q;       // MFA_MASK_BLOCKS: queries and keys per mask block
  mfa_u32 mask_block_k;
  mfa_u32 max_pages;          // MFA_PAGED_KV: block table entries per sequence
};
