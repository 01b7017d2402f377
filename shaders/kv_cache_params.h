// The host/kernel contract of the KV-cache append kernel (shaders/kv_cache_append.metal) and the rotary embedding
// kernel (shaders/rotary_embedding.metal): their params structs and buffer indices, included by both shaders and the
// C++ planner (csrc/kv_cache/), so the two sides can never disagree about layout.
//
// Canonical tensors (see csrc/ops.cpp), all read or written through element strides over their first dims with a
// dense last dim:
//   k_cache (pages, Hk, page_size, D), v_cache (pages, Hk, page_size, Dv): pools of pages; logical cache position i
//     of sequence b is row i % page_size of page block_table[b][i / page_size].
//   k (B, Hk, Lnew, D), v (B, Hk, Lnew, Dv): the new tokens; token t of sequence b goes to position positions[b] + t.
//   x (B, H, L, D): the rotary embedding's input; its output is contiguous (B, H, L, D).
//   rotary_cos, rotary_sin (seqlen_ro, rotary_dim / 2): the angles' cosines and sines per position (rotary.h).
#pragma once

#include "portable_types.h"

// Threads per threadgroup of both kernels: each thread handles one unit of a row (rotary.h: a rotated pair of
// elements, or up to two elements copied as they are).
#define MFA_KV_CACHE_THREADS 256

// Buffer indices ([[buffer(i)]]) of kv_cache_append.
#define MFA_KVC_K_CACHE 0
#define MFA_KVC_V_CACHE 1
#define MFA_KVC_K 2
#define MFA_KVC_V 3
#define MFA_KVC_BLOCK_TABLE 4  // int (B, max_pages)
#define MFA_KVC_POSITIONS 5    // int (B,)
#define MFA_KVC_COS 6          // MFA_ROTARY_T (seqlen_ro, rotary_dim / 2); unread without rotary (rotary_dim = 0)
#define MFA_KVC_SIN 7
#define MFA_KVC_PARAMS 8

// Buffer indices of rotary_embedding.
#define MFA_ROPE_X 0
#define MFA_ROPE_OUT 1
#define MFA_ROPE_POSITIONS 2  // int (B,)
#define MFA_ROPE_COS 3
#define MFA_ROPE_SIN 4
#define MFA_ROPE_PARAMS 5

// The rotation of a row's first rotary_dim elements (rotary.h). rotary_dim = 0: no rotation (cos and sin unread).
struct RotaryTable {
  mfa_i64 cos_strides[2];  // elements over (position, angle)
  mfa_i64 sin_strides[2];
  mfa_u32 rotary_dim;      // even, <= the row's length
  mfa_u32 interleaved;     // 1: pairs (2i, 2i + 1) (GPT-J); 0: pairs (i, i + rotary_dim / 2) (GPT-NeoX)
};

// Thread g of the grid (g < threads) handles unit g % units_per_row of row g / units_per_row; the rows are the
// (batch, head, token) triples, token fastest. A row's units: k_units over k (rotary.h: rotary_dim / 2 +
// ceil((D - rotary_dim) / 2)), then ceil(Dv / 2) over v.
struct KvCacheAppendParams {
  mfa_i64 k_cache_strides[3];  // elements over (page, head, row in page)
  mfa_i64 v_cache_strides[3];
  mfa_i64 k_strides[3];        // elements over (batch, head, token)
  mfa_i64 v_strides[3];
  mfa_i64 block_table_strides[2];
  mfa_i64 positions_stride;
  RotaryTable rotary;
  mfa_u32 threads;             // rows x units_per_row (< 2^32)
  mfa_u32 units_per_row;
  mfa_u32 k_units;
  mfa_u32 kv_heads;
  mfa_u32 new_len;
  mfa_u32 head_dim;            // D
  mfa_u32 value_dim;           // Dv
  mfa_u32 pages;               // the caches' pages: a page outside [0, pages) is never written (the host rejects it)
  mfa_u32 page_size;
  mfa_u32 padding;
};

// Thread g handles unit g % units_per_row of row g / units_per_row of x ((batch, head, token), token fastest); the
// token rotates at position positions[batch] + token, or positions[batch] when same_position.
struct RotaryEmbeddingParams {
  mfa_i64 x_strides[3];  // elements over (batch, head, token); the output is contiguous
  mfa_i64 positions_stride;
  RotaryTable rotary;
  mfa_u32 threads;       // rows x units_per_row (< 2^32)
  mfa_u32 units_per_row;
  mfa_u32 heads;
  mfa_u32 seq_len;
  mfa_u32 head_dim;
  mfa_u32 same_position;
};
