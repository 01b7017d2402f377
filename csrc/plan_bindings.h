// Python bindings of the portable planning code: launch plans, problems and planners (used by the emulator
// executor, the MPS executor's Python side and the plan tests).
#pragma once

#include <torch/extension.h>

namespace mfa {

void bind_plans(pybind11::module& module);

}  // namespace mfa
