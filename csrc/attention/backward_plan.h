// Planning of the attention backward (no atomics): D = rowsum(dO * O), then dQ parallel over query blocks and dK/dV
// parallel over key blocks, each recomputing P from the saved log-sum-exp. Plain data, like the forward planner.
#pragma once

#include "attention/problem.h"
#include "launch_plan.h"

namespace mfa {

// Tensor names the plan binds: the forward's inputs, "out" (the forward output), "stats", "grad_out", and the outputs
// "dq", "dk", "dv", plus "dmask" when mask_grad: float32 with the mask's shape and strides, zero-filled by the caller
// (the kernel writes the score gradient of every (row, key) the band reaches; the mask must have every dim full).
// Its temporaries: "delta" (B x Hq x Lq float), and with count_tiles "tile_count_dq" and "tile_count_dkdv".
Plan plan_attention_backward(const AttentionProblem& problem, bool mask_grad);

}  // namespace mfa
