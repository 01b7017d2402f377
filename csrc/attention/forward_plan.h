// Planning of the attention forward: variant choice, grid and temporaries, as plain data (no Metal types, no torch
// dispatch). mfa_torch/metal/attention.py fills the problem from the op's tensors.
#pragma once

#include "attention/problem.h"
#include "launch_plan.h"

namespace mfa {

// Tensor names the plan binds: "q", "k", "v", "mask", "alibi", "cu_seqlens_q", "cu_seqlens_k", "out" (B, Hq, Lq, Ev)
// and "stats" (B, Hq, Lq, 2) float32 (each row's softmax max and sum), plus its temporaries. Throws std::invalid_argument for problems the kernels do not
// take (the message names the argument).
Plan plan_attention_forward(const AttentionProblem& problem);

}  // namespace mfa
