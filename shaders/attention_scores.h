// Scores of attention, element by element: scale, softcap, ALiBi, mask and the causal/window structure, in the
// order mfa_torch's reference path and the fp64 test oracle apply them. Shared by the forward and backward kernels.
#pragma once
#include "attention_params.h"

// One query row: where it sits and what its scores read.
struct AttentionRow {
  uint batch;      // batch index (varlen: sequence index): selects ALiBi slopes, mask rows and dropout counters
  uint head;       // query head
  int query;       // position within its sequence
  int diagonal;    // query + offset: the key this row sees on the (possibly bottom-right) diagonal
  float slope;     // ALiBi slope, 0 without ALiBi
};

// Whether the causal/window structure and the key count let this row attend `key`.
inline bool attention_allowed(constant AttentionParams& p, thread const AttentionRow& row, int key, int kv_len) {
  return key >= 0 && key < kv_len && (p.window_left < 0 || key >= row.diagonal - p.window_left) &&
         (p.window_right < 0 || key <= row.diagonal + p.window_right);
}

// Score in natural-log units from the raw dot product q . k; -inf for keys the row may not attend.
template <typename MaskT>
inline float attention_score(float dot, constant AttentionParams& p, thread const AttentionRow& row, int key,
                             int kv_len, device const MaskT* mask, int mask_kind) {
  if (!attention_allowed(p, row, key, kv_len)) return -INFINITY;
  float s = dot * p.scale;
  if (p.softcap > 0.0f) s = p.softcap * metal::precise::tanh(s / p.softcap);
  s -= row.slope * metal::abs(float(row.diagonal - key));
  if (mask_kind != MFA_MASK_NONE) {
    const long at = long(row.batch) * p.mask_strides[0] + long(row.head) * p.mask_strides[1] +
                    long(row.query) * p.mask_strides[2] + long(key) * p.mask_strides[3];
    if (mask_kind == MFA_MASK_BOOL) {
      if (!bool(mask[at])) return -INFINITY;
    } else {
      s += float(mask[at]);
    }
  }
  return s;
}
