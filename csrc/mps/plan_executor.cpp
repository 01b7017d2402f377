#include "mps/plan_executor.h"

#include <ATen/native/mps/MetalShaderLibrary.h>

#include <memory>
#include <mutex>
#include <stdexcept>

#include "shader_source.h"

namespace mfa {
namespace {

using at::native::mps::MetalKernelFunction;
using at::native::mps::MetalShaderLibrary;

// One compiled library per variant (shader + defines), one pipeline per kernel name; compiled on first use, once,
// also under concurrent calls (the mutex covers compilation: PyTorch's library cache is not thread-safe everywhere).
class VariantCache {
 public:
  std::shared_ptr<MetalKernelFunction> kernel(const Launch& launch) {
    std::string key = launch.shader;
    std::string prelude;
    for (const auto& [name, value] : launch.defines) {
      key += ";" + name + "=" + value;
      prelude += "#define " + name + " " + value + "\n";
    }
    std::lock_guard<std::mutex> lock(mutex_);
    auto& function = functions_[key + ":" + launch.kernel];
    if (!function) {
      auto& library = libraries_[key];
      if (!library) library = std::make_unique<MetalShaderLibrary>(prelude + expanded_shader_source(launch.shader));
      function = library->getKernelFunction(launch.kernel);
    }
    return function;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<MetalShaderLibrary>> libraries_;
  std::unordered_map<std::string, std::shared_ptr<MetalKernelFunction>> functions_;
};

VariantCache& variant_cache() {
  static VariantCache cache;
  return cache;
}

}  // namespace

void run_plan_on_mps(const Plan& plan, const std::unordered_map<std::string, at::Tensor>& tensors) {
  for (const Launch& launch : plan.launches) {
    // Look everything up before encoding: nothing inside the command block may throw.
    std::vector<const at::Tensor*> bound;
    for (const Argument& argument : launch.arguments) {
      if (argument.tensor.empty()) {
        bound.push_back(nullptr);
        continue;
      }
      auto it = tensors.find(argument.tensor);
      if (it == tensors.end()) throw std::invalid_argument("launch plan names an unknown tensor: " + argument.tensor);
      bound.push_back(&it->second);
    }
    auto function = variant_cache().kernel(launch);
    const uint64_t limit = function->getMaxThreadsPerThreadgroup();
    const auto& size = launch.threads_per_threadgroup;
    if (size[0] * size[1] * size[2] > limit) {
      throw std::runtime_error("mfa_torch: kernel " + launch.kernel + " needs " +
                               std::to_string(size[0] * size[1] * size[2]) + " threads per threadgroup, the pipeline " +
                               "allows " + std::to_string(limit));
    }
    const std::array<uint64_t, 3> threads = {launch.threadgroups[0] * size[0], launch.threadgroups[1] * size[1],
                                             launch.threadgroups[2] * size[2]};
    function->runCommandBlock([&] {
      function->startEncoding();
      for (size_t i = 0; i < launch.arguments.size(); i++) {
        const Argument& argument = launch.arguments[i];
        if (bound[i]) {
          function->setArg(argument.index, *bound[i]);
        } else {
          function->setArg(argument.index, argument.bytes.data(), argument.bytes.size());
        }
      }
      // dispatch() takes the total thread count (dispatchThreads); the plan's grid is a whole number of groups.
      function->dispatch(c10::ArrayRef<uint64_t>(threads.data(), 3), c10::ArrayRef<uint64_t>(size.data(), 3));
    });
  }
}

}  // namespace mfa
