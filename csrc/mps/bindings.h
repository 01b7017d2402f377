// Python bindings of the MPS executor (macOS builds only).
#pragma once

#include <torch/extension.h>

namespace mfa {

void bind_mps_executor(pybind11::module& module);

}  // namespace mfa
