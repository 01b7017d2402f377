// Planning of the GEMM: validation, variant choice, the Stream-K schedule and temporaries, as plain data (no Metal types, no
// torch dispatch). mfa_torch/metal/gemm.py fills the problem from the op's tensors.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "launch_plan.h"

namespace mfa {

// C (batch, m, n) = A (batch, m, k) x B (batch, k, n) (+ C if accumulate) (+ bias (n,)).
struct GemmProblem {
  std::string dtype = "float32";  // of a, b, bias and c: "float32", "float16" or "bfloat16"
  int64_t batch = 0, m = 0, n = 0, k = 0;
  std::array<int64_t, 3> a_strides{};  // element strides of a over (batch, m, k); batch stride 0 = broadcast
  std::array<int64_t, 3> b_strides{};  // element strides of b over (batch, k, n)
  bool has_bias = false;
  bool accumulate = false;  // add the existing contents of c
  // Whether a, b, c and bias begin on 16 bytes (their storage offsets: allocations are aligned); with the strides
  // they decide which accesses may be 4-element vectors.
  bool a_aligned = false, b_aligned = false, c_aligned = false, bias_aligned = false;
  std::string family = "apple9";
};

// Tensor names the plan binds: "a", "b", "bias", "c" (contiguous (batch, m, n)), plus its temporaries. Throws
// std::invalid_argument for problems the kernels do not take (the message names the argument).
Plan plan_gemm(const GemmProblem& problem);

}  // namespace mfa
