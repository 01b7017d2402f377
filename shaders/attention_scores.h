// The geometry and scores of attention shared by the forward and backward kernels: where a sequence's tokens sit
// (and their rows in the strided q, k, v), which key/query blocks the causal/window band can reach, and scores element
// by element (scale, softcap, ALiBi, mask and the causal/window structure, in the order mfa_torch's reference path
// and the fp64 oracle apply them).
#pragma once
#include "attention_params.h"
#include "attention_softmax.h"
#include "dropout_rng.h"

#ifndef MFA_SCORE_FEATURES
#error "MFA_SCORE_FEATURES names the score features the variant compiles in (attention_params.h)"
#endif

// Whether a float mask entry is -inf (the key is masked out), from its bits in the mask's own type.
inline bool attention_masks_out(float m) { return as_type<uint>(m) == MFA_MINUS_INFINITY_BITS; }
inline bool attention_masks_out(half m) { return as_type<ushort>(m) == ushort(0xfc00); }
inline bool attention_masks_out(bfloat m) { return as_type<ushort>(m) == ushort(0xff80); }

// One sequence of the call: its first q/k token in the tensors and its lengths (varlen: from cu_seqlens).
struct AttentionSequence {
  long q_first, k_first;
  int q_len, kv_len;
  uint tensor_batch;  // batch index into q/k/v (0 for varlen: one packed batch)
  int offset;         // key index on the diagonal of query 0: 0, or kv_len - q_len (bottom-right)
};

inline AttentionSequence attention_sequence(constant AttentionParams& p, uint seq, device const int* cu_q,
                                            device const int* cu_k) {
  AttentionSequence s;
  s.q_first = 0, s.k_first = 0, s.q_len = int(p.q_len), s.kv_len = int(p.kv_len), s.tensor_batch = seq;
  if (p.varlen) {
    s.q_first = cu_q[seq], s.k_first = cu_k[seq], s.tensor_batch = 0;
    s.q_len = cu_q[seq + 1] - cu_q[seq];
    s.kv_len = cu_k[seq + 1] - cu_k[seq];
  }
  s.offset = p.bottom_right ? s.kv_len - s.q_len : 0;
  return s;
}

// Element offset of row `row` of (batch, head) in q, k or v, from the tensor's strides over (batch, head, row).
inline long attention_row_offset(constant mfa_i64* strides, uint batch, uint head, long row) {
  return long(batch) * strides[0] + long(head) * strides[1] + row * strides[2];
}

// Keys [x, y] that some query in [first, last] may attend under the causal/window band (y < x: none).
inline int2 attention_key_band(constant AttentionParams& p, thread const AttentionSequence& s, int first, int last) {
  return int2(p.window_left < 0 ? 0 : max(0, first + s.offset - p.window_left),
              p.window_right < 0 ? s.kv_len - 1 : min(s.kv_len - 1, last + s.offset + p.window_right));
}

// Queries [x, y] that may attend some key in [first, last] (y < x: none).
inline int2 attention_query_band(constant AttentionParams& p, thread const AttentionSequence& s, int first, int last) {
  return int2(p.window_right < 0 ? 0 : max(0, first - s.offset - p.window_right),
              p.window_left < 0 ? s.q_len - 1 : min(s.q_len - 1, last - s.offset + p.window_left));
}

// One query row: where it sits and what its scores read.
struct AttentionRow {
  uint batch;      // batch index (varlen: sequence index): selects ALiBi slopes, mask rows and dropout counters
  uint head;       // query head
  int query;       // position within its sequence
  int diagonal;    // query + offset: the key this row sees on the (possibly bottom-right) diagonal
#if MFA_SCORE_FEATURES & MFA_SCORE_ALIBI
  float slope;     // ALiBi slope
#endif
};

inline AttentionRow attention_row(constant AttentionParams& p, thread const AttentionSequence& s, uint seq, uint head,
                                  int query, device const float* alibi) {
  AttentionRow row;
  row.batch = seq;
  row.head = head;
  row.query = query;
  row.diagonal = query + s.offset;
#if MFA_SCORE_FEATURES & MFA_SCORE_ALIBI
  row.slope = alibi[seq * p.alibi_batch_stride + head];
#endif
  return row;
}

// Whether the causal/window structure and the key count let this row attend `key`.
inline bool attention_allowed(constant AttentionParams& p, thread const AttentionRow& row, int key, int kv_len) {
  return key >= 0 && key < kv_len && (p.window_left < 0 || key >= row.diagonal - p.window_left) &&
         (p.window_right < 0 || key <= row.diagonal + p.window_right);
}

// Whether every key of [key_first, key_last] lies inside the sequence and the causal/window band of every query of
// [query_first, query_last]: the scores of such a block need no structure check, only blocks that cross the band's
// edge (or the sequence's end) do.
inline bool attention_inside_band(constant AttentionParams& p, thread const AttentionSequence& s, int query_first,
                                  int query_last, int key_first, int key_last) {
  return query_last < s.q_len && key_last < s.kv_len &&
         (p.window_left < 0 || key_first >= query_last + s.offset - p.window_left) &&
         (p.window_right < 0 || key_last <= query_first + s.offset + p.window_right);
}

#if MFA_MASK_KIND == MFA_MASK_BLOCKS
// The state of block (query block qb, key block kb) of the block mask of (batch, head).
inline int attention_block_state(constant AttentionParams& p, device const int* states, uint batch, uint head, int qb,
                                 int kb) {
  return states[long(batch) * p.mask_strides[0] + long(head) * p.mask_strides[1] + long(qb) * p.mask_strides[2] +
                long(kb) * p.mask_strides[3]];
}

// What the mask blocks under queries [q_first, q_last] of heads [head, head + heads) and keys [k_first, k_last]
// (inside the sequence) hold: MFA_BLOCK_EMPTY if all are empty, MFA_BLOCK_FULL if all are full, else 0 (some
// elements need their bits).
inline int attention_blocks_cover(constant AttentionParams& p, device const int* states, uint batch, uint head,
                                  uint heads, int q_first, int q_last, int k_first, int k_last) {
  bool attends = false, full = true;
  for (uint h = 0; h < (p.mask_strides[1] == 0 ? 1u : heads); h++) {  // heads sharing one mask: one look
    for (int qb = q_first / int(p.mask_block_q); qb <= q_last / int(p.mask_block_q); qb++) {
      for (int kb = k_first / int(p.mask_block_k); kb <= k_last / int(p.mask_block_k); kb++) {
        const int state = attention_block_state(p, states, batch, head + h, qb, kb);
        attends = attends || state != MFA_BLOCK_EMPTY;
        full = full && state == MFA_BLOCK_FULL;
      }
    }
  }
  return !attends ? MFA_BLOCK_EMPTY : full ? MFA_BLOCK_FULL : 0;
}

// The dK/dV walk down a key block's queries: the first block of `block_q` queries at or after block `from` that
// holds a query of a non-empty mask block in key blocks [kb_first, kb_last] of (batch, head), found by binary search
// in each key block's q-side list (MFA_ATTN_MASK_Q_LISTS); `end` if there is none.
inline int attention_next_listed_block(constant AttentionParams& p, device const int* lists, uint batch, uint head,
                                       int kb_first, int kb_last, int block_q, int from, int end) {
  const long query_blocks = (long(p.q_len) + p.mask_block_q - 1) / p.mask_block_q;
  const long key_blocks = (long(p.kv_len) + p.mask_block_k - 1) / p.mask_block_k;
  const long heads = p.mask_strides[1] == 0 ? 1 : p.q_heads;
  const long list_batch = p.mask_strides[0] == 0 ? 0 : batch, list_head = p.mask_strides[1] == 0 ? 0 : head;
  const long first_query = long(from) * block_q;
  int next = end;
  for (int kb = kb_first; kb <= kb_last; kb++) {
    device const int* const list = lists + ((list_batch * heads + list_head) * key_blocks + kb) * (query_blocks + 1);
    int lo = 0, hi = list[0];  // the first listed mask block that ends after first_query
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if ((long(list[1 + mid]) + 1) * p.mask_block_q <= first_query) lo = mid + 1; else hi = mid;
    }
    if (lo < list[0]) next = min(next, max(from, int(long(list[1 + lo]) * p.mask_block_q / block_q)));
  }
  return next;
}

// Whether the block mask lets `row` attend `key` (inside the sequence): its block's state, or its bit.
inline bool attention_block_allows(constant AttentionParams& p, device const int* states, device const uint* bits,
                                   thread const AttentionRow& row, int key) {
  const int state = attention_block_state(p, states, row.batch, row.head, row.query / int(p.mask_block_q),
                                          key / int(p.mask_block_k));
  if (state < 0) return state == MFA_BLOCK_FULL;
  const uint r = uint(row.query) % p.mask_block_q, c = uint(key) % p.mask_block_k;
  return (bits[(long(state) * p.mask_block_q + r) * ((p.mask_block_k + 31) / 32) + c / 32] >> (c % 32)) & 1u;
}
#endif

// Score in natural-log units from the raw dot product q . k, and whether the row may attend `key` at all (`allowed`:
// false for the causal/window structure, a false bool mask entry, a -inf float one or the block mask; the score is
// then MFA_MASKED_SCORE). `inside_band`: the key's block lies inside the band (attention_inside_band), so only the
// mask can exclude it; `mask_full`: every block mask block under the key's block is full (attention_blocks_cover),
// so the block mask cannot (mask_bits: the block mask's bits).
template <typename MaskT>
inline float attention_score(float dot, constant AttentionParams& p, thread const AttentionRow& row, int key,
                             int kv_len, device const MaskT* mask, device const uint* mask_bits, bool inside_band,
                             bool mask_full, thread bool& allowed) {
  allowed = false;
  if (!inside_band && !attention_allowed(p, row, key, kv_len)) return MFA_MASKED_SCORE;
#if MFA_MASK_KIND == MFA_MASK_BLOCKS
  if (!mask_full && !attention_block_allows(p, mask, mask_bits, row, key)) return MFA_MASKED_SCORE;
#endif
  float s = dot * p.scale;
#if MFA_SCORE_FEATURES & MFA_SCORE_SOFTCAP
  s = p.softcap * metal::precise::tanh(s / p.softcap);
#endif
#if MFA_SCORE_FEATURES & MFA_SCORE_ALIBI
  s -= row.slope * metal::abs(float(row.diagonal - key));
#endif
  // The mask kind is chosen by the preprocessor, so no other kind's conversion (bool of a bfloat) is ever compiled.
#if MFA_MASK_KIND == MFA_MASK_BOOL || MFA_MASK_KIND == MFA_MASK_FLOAT
  const long at = long(row.batch) * p.mask_strides[0] + long(row.head) * p.mask_strides[1] +
                  long(row.query) * p.mask_strides[2] + long(key) * p.mask_strides[3];
#if MFA_MASK_KIND == MFA_MASK_BOOL
  if (!bool(mask[at])) return MFA_MASKED_SCORE;
#else
  const MaskT m = mask[at];
  if (attention_masks_out(m)) return MFA_MASKED_SCORE;
  s += float(m);
#endif
#endif
  allowed = true;
  return s;
}

// Dropout's factor for (row, key): 0 (dropped) or 1 / (1 - p) (kept); the constant 1 without MFA_SCORE_DROPOUT.
inline float attention_dropout_factor(constant AttentionParams& p, thread const AttentionRow& row, int key) {
#if MFA_SCORE_FEATURES & MFA_SCORE_DROPOUT
  const ulong counter = ulong(p.dropout_offset) +
                        ((ulong(row.batch) * p.q_heads + row.head) * p.dropout_rows + ulong(row.query)) * p.dropout_cols +
                        ulong(key);
  return mfa_dropout_keep(counter, p.dropout_key_lo, p.dropout_key_hi, p.dropout_threshold) ? p.dropout_scale : 0.0f;
#else
  return 1.0f;
#endif
}

// Gradient with respect to the raw dot product q . k from ds, the gradient of the score (after softcap, where ALiBi
// and the mask are added): the softcap chain rule and the scale.
inline float attention_dot_gradient(float ds, float dot, constant AttentionParams& p) {
#if MFA_SCORE_FEATURES & MFA_SCORE_SOFTCAP
  const float t = metal::precise::tanh(dot * p.scale / p.softcap);
  ds *= 1.0f - t * t;
#endif
  return ds * p.scale;
}
