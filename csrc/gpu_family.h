// Apple GPU families that select block sizes: Apple7 = M1, Apple8 = M2, Apple9 = M3/M4, Apple10 = M5.
#pragma once

#include <stdexcept>
#include <string>

namespace mfa {

enum class GpuFamily { Apple7 = 7, Apple8 = 8, Apple9 = 9, Apple10 = 10 };

// "apple7" ... "apple10"; anything else is an error naming the accepted values.
inline GpuFamily parse_gpu_family(const std::string& name) {
  if (name == "apple7") return GpuFamily::Apple7;
  if (name == "apple8") return GpuFamily::Apple8;
  if (name == "apple9") return GpuFamily::Apple9;
  if (name == "apple10") return GpuFamily::Apple10;
  throw std::invalid_argument("gpu family must be one of 'apple7', 'apple8', 'apple9', 'apple10', got '" + name + "'");
}

// M3 and later: dynamic caching makes loads straight from device memory cheap (facts/metal.md).
inline bool has_dynamic_caching(GpuFamily family) { return family >= GpuFamily::Apple9; }

// bfloat arithmetic is native from M3 (Apple9) on; before, the kernels compute bfloat operands in float (facts).
inline bool has_bfloat_arithmetic(GpuFamily family) { return family >= GpuFamily::Apple9; }

}  // namespace mfa
