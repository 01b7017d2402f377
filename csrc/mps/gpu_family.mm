#include "mps/gpu_family.h"

#include <ATen/mps/MPSDevice.h>
#include <Metal/Metal.h>

namespace mfa {

std::string mps_gpu_family() {
  id<MTLDevice> device = at::mps::MPSDevice::getInstance()->device();
  // MTLGPUFamilyApple10 (1010) by value: older SDKs do not name it.
  if ([device supportsFamily:static_cast<MTLGPUFamily>(1010)]) return "apple10";
  if ([device supportsFamily:MTLGPUFamilyApple9]) return "apple9";
  if ([device supportsFamily:MTLGPUFamilyApple8]) return "apple8";
  return "apple7";
}

}  // namespace mfa
