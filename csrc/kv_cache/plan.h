// Planning of the KV-cache append (with fused rotary embeddings) and of the rotary embedding of queries: validation,
// variant choice and the grid, as plain data (no Metal types, no torch dispatch). mfa_torch/metal/kv_cache.py fills
// the problems from the ops' tensors (csrc/ops.cpp has the canonical forms).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "launch_plan.h"

namespace mfa {

// The cos / sin tables (seqlen_ro, rotary_dim / 2) of a call; rotary_dim = 0: no rotation (no tables).
struct RotaryTables {
  std::string dtype;  // of the tables: the inputs' dtype or "float32"; ignored without rotation
  int64_t rotary_dim = 0;  // even, <= the head dim
  int64_t length = 0;      // seqlen_ro: positions the tables cover
  bool interleaved = false;  // pairs (2i, 2i + 1) (GPT-J), else (i, i + rotary_dim / 2) (GPT-NeoX)
  std::array<int64_t, 2> cos_strides{};  // elements over (position, angle)
  std::array<int64_t, 2> sin_strides{};
};

// Writes k (batch, kv_heads, new_len, head_dim), rotated, and v (batch, kv_heads, new_len, value_dim) into the caches
// (pages, kv_heads, page_size, head_dim / value_dim) at positions[b] + t through block_table (batch, max_pages).
struct KvCacheAppendProblem {
  std::string dtype = "float32";  // of the caches, k and v: "float32", "float16" or "bfloat16"
  int64_t batch = 0, kv_heads = 0, new_len = 0, head_dim = 0, value_dim = 0;
  int64_t pages = 0, page_size = 0, max_pages = 0;
  std::array<int64_t, 3> k_cache_strides{};  // elements over (page, head, row in page); the last dim is dense
  std::array<int64_t, 3> v_cache_strides{};
  std::array<int64_t, 3> k_strides{};  // elements over (batch, head, token)
  std::array<int64_t, 3> v_strides{};
  std::array<int64_t, 2> block_table_strides{};
  int64_t positions_stride = 1;
  RotaryTables rotary;
};

// x (batch, heads, seq_len, head_dim) -> a contiguous rotated copy; token t of batch b at positions[b] + t, or at
// positions[b] when same_position.
struct RotaryEmbeddingProblem {
  std::string dtype = "float32";
  int64_t batch = 0, heads = 0, seq_len = 0, head_dim = 0;
  std::array<int64_t, 3> x_strides{};
  int64_t positions_stride = 1;
  bool same_position = false;
  RotaryTables rotary;
};

// Tensor names the plans bind: "k_cache", "v_cache", "k", "v", "block_table", "positions", "rotary_cos",
// "rotary_sin" (append; the tables only with rotation), "x", "out" (contiguous), "positions", "rotary_cos",
// "rotary_sin" (rotary embedding). Throw std::invalid_argument for problems the kernels do not take (the message
// names the argument); the values of positions and block_table are the caller's to check.
Plan plan_kv_cache_append(const KvCacheAppendProblem& problem);
Plan plan_rotary_embedding(const RotaryEmbeddingProblem& problem);

}  // namespace mfa
