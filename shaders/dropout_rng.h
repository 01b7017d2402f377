// The counter-based dropout keep mask shared by the attention kernels, the C++ planner (which mixes the seed) and,
// re-implemented independently, mfa_torch/reference.py: element (b, h, i, j) keeps its probability when
// hash(counter) >= p * 2^32 with counter = offset + ((b * H + h) * rows + i) * cols + j, so forward and backward
// regenerate the same mask without storing it.
#pragma once
#include "portable_types.h"

inline mfa_u32 mfa_mix32(mfa_u32 x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  return x ^ (x >> 15);
}

// The two 32-bit keys of a 64-bit seed.
inline mfa_u32 mfa_dropout_key_lo(mfa_u64 seed) { return mfa_mix32(mfa_u32(seed & 0xFFFFFFFFu) ^ 0x9E3779B9u); }
inline mfa_u32 mfa_dropout_key_hi(mfa_u64 seed) { return mfa_mix32(mfa_u32(seed >> 32) ^ 0x7F4A7C15u); }

inline bool mfa_dropout_keep(mfa_u64 counter, mfa_u32 key_lo, mfa_u32 key_hi, mfa_u32 threshold) {
  const mfa_u32 lo = mfa_u32(counter & 0xFFFFFFFFu), hi = mfa_u32(counter >> 32);
  return mfa_mix32(mfa_mix32(lo ^ key_lo) ^ hi ^ key_hi) >= threshold;
}
