// A launch plan: everything an executor needs to run one op's Metal kernels, as plain data. Planners
// (csrc/attention/, csrc/gemm/) produce it; the MPS executor (csrc/mps/) and the emulator executor
// (mfa_torch/metal/emulator_executor.py) run it, so the GPU and the emulator execute the same launches.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace mfa {

// One [[buffer(index)]] binding: a tensor of the call (by name), or bytes (a params struct).
struct Argument {
  uint32_t index = 0;
  std::string tensor;  // name in the executor's tensor table; empty for bytes
  std::string bytes;
};

// A scratch tensor the executor allocates on the call's device before the first launch.
struct Temporary {
  std::string name;
  std::string dtype;  // "float32" or "int32"
  int64_t numel = 0;
};

// Threadgroup memory every Apple GPU family gives a threadgroup (facts/metal.md).
constexpr uint64_t kThreadgroupMemoryLimit = 32 * 1024;

struct Launch {
  std::string shader;  // file under shaders/
  std::string kernel;  // kernel function name
  std::vector<std::pair<std::string, std::string>> defines;  // the variant: one compiled library per set
  std::array<uint64_t, 3> threadgroups{};
  std::array<uint64_t, 3> threads_per_threadgroup{};
  uint64_t threadgroup_memory = 0;  // bytes of static threadgroup memory the variant declares (checked by tests)
  uint32_t registers = 0;  // the planner's estimate of 32-bit registers per thread (the emulator's count); 0: none
  std::vector<Argument> arguments;
};

struct Plan {
  std::vector<Temporary> temporaries;
  std::vector<Launch> launches;
};

template <typename T>
Argument bytes_argument(uint32_t index, const T& value) {
  Argument a;
  a.index = index;
  a.bytes.resize(sizeof(T));
  std::memcpy(a.bytes.data(), &value, sizeof(T));
  return a;
}

inline Argument tensor_argument(uint32_t index, std::string name) {
  Argument a;
  a.index = index;
  a.tensor = std::move(name);
  return a;
}

}  // namespace mfa
