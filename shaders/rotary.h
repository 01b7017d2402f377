// Rotary position embeddings, the one definition the KV-cache append and the rotary embedding kernels share.
//
// A row of `dim` elements is cut into rotary_dim / 2 + ceil((dim - rotary_dim) / 2) units, each one thread's work:
// units [0, rotary_dim / 2) rotate one pair of elements each, and the rest copy the elements past rotary_dim two at
// a time (the last one alone when the count is odd). Pair i is (2i, 2i + 1) when interleaved (GPT-J), else
// (i, i + rotary_dim / 2) (GPT-NeoX); at position pos it turns by the angle of row pos, column i of the cos / sin
// tables:
//   (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos),
// computed in float and rounded once to the element type. Copied elements are moved as they are (bit for bit).
#pragma once
#include <metal_stdlib>
#include "kv_cache_params.h"

inline float2 mfa_rotate(float x1, float x2, float c, float s) { return float2(x1 * c - x2 * s, x1 * s + x2 * c); }

// Copies elements first and first + 1 (when < dim) of a row.
template <typename T>
inline void mfa_copy_pair(device T* dst, device const T* src, uint first, uint dim) {
  dst[first] = src[first];
  if (first + 1 < dim) dst[first + 1] = src[first + 1];
}

// Unit `unit` of a row of `dim` elements from `src` to `dst` (both pointing at the row's element 0), rotated at
// `position` (rotary.rotary_dim = 0: every unit copies).
template <typename T, typename R>
inline void mfa_rotary_unit(device T* dst, device const T* src, uint unit, uint dim, constant RotaryTable& rotary,
                            device const R* cos_table, device const R* sin_table, uint position) {
  const uint half_dim = rotary.rotary_dim / 2;
  if (unit >= half_dim) {
    mfa_copy_pair(dst, src, rotary.rotary_dim + 2 * (unit - half_dim), dim);
    return;
  }
  const uint first = rotary.interleaved ? 2 * unit : unit, second = rotary.interleaved ? first + 1 : unit + half_dim;
  const float c = float(cos_table[long(position) * rotary.cos_strides[0] + long(unit) * rotary.cos_strides[1]]);
  const float s = float(sin_table[long(position) * rotary.sin_strides[0] + long(unit) * rotary.sin_strides[1]]);
  const float2 turned = mfa_rotate(float(src[first]), float(src[second]), c, s);
  dst[first] = T(turned.x);
  dst[second] = T(turned.y);
}
