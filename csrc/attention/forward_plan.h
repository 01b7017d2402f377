// Planning of the attention forward: validation, variant choice, grid and temporaries, as plain data (no Metal
// types, no torch dispatch). mfa_torch/metal/attention.py fills the problem from the op's tensors.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "launch_plan.h"

namespace mfa {

// The canonical attention call of csrc/ops.cpp, described by sizes and options only.
struct AttentionProblem {
  std::string dtype = "float32";  // of q, k, v and out: "float32", "float16" or "bfloat16"
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, value_dim = 0;
  std::string mask = "none";  // "none", "bool", or the float mask's dtype ("float32", "float16", "bfloat16")
  std::array<int64_t, 4> mask_strides{};  // element strides over (B, Hq, L, S), 0 on broadcast dims
  bool has_alibi = false;
  int64_t alibi_batch_stride = 0;
  int64_t num_sequences = 0;  // > 0: varlen (batch 1, cu_seqlens with num_sequences + 1 entries)
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  double scale = 1.0;
  int64_t window_left = -1, window_right = -1;
  bool bottom_right = false;
  double softcap = 0.0;
  double dropout_p = 0.0;
  int64_t dropout_seed = 0, dropout_offset = 0;
  std::string family = "apple9";
  bool count_tiles = false;  // debug: the plan adds the int32 temporary "tile_count", one entry per threadgroup
};

// Tensor names the plan binds: "q", "k", "v", "mask", "alibi", "cu_seqlens_q", "cu_seqlens_k", "out" (B, Hq, Lq, Ev)
// and "lse" (B, Hq, Lq) float32, plus its temporaries. Throws std::invalid_argument for problems the kernels do not
// take (the message names the argument).
Plan plan_attention_forward(const AttentionProblem& problem);

}  // namespace mfa
