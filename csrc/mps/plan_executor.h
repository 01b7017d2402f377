// Runs a launch plan on PyTorch's current MPS stream (facts/metal.md, pattern 1: MetalShaderLibrary), so the work
// is ordered with PyTorch's own queued work. Plain C++: type-checked on Linux, compiled on macOS only.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <unordered_map>

#include "launch_plan.h"

namespace mfa {

// tensors: every name the plan's arguments use (inputs, outputs and the plan's temporaries), on the MPS device.
void run_plan_on_mps(const Plan& plan, const std::unordered_map<std::string, at::Tensor>& tensors);

// Compiles the launch's variant and its kernel's pipeline as its first run would, without running it (the doctor's
// compile check); throws PyTorch's error with the compiler's log when it does not compile.
void compile_launch_on_mps(const Launch& launch);

}  // namespace mfa
