// The Apple GPU family of PyTorch's MPS device ("apple7" ... "apple10"), which selects block tables. The only
// Objective-C++ of the executor (gpu_family.mm): asking the device needs the Metal API itself.
#pragma once

#include <string>

namespace mfa {

std::string mps_gpu_family();

}  // namespace mfa
