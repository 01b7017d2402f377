#include "mps/plan_executor.h"

#include <ATen/mps/MPSProfiler.h>
#include <ATen/native/mps/MetalShaderLibrary.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_set>

#include "mps/compile_options.h"
#include "shader_source.h"

namespace mfa {
namespace {

using at::native::mps::MetalKernelFunction;
using at::native::mps::MetalShaderLibrary;

// What one launch encodes with: a MetalKernelFunction of its own (the object holds the encoder it was started with,
// so sharing one across launches would race if PyTorch ran several MPS streams), and the name torch.mps.profiler
// shows for the kernel variant. The profiler keys kernels by address: the name's address is stable per variant.
struct Kernel {
  std::shared_ptr<MetalKernelFunction> function;
  const std::string* profiler_name;
};

// One compiled library per variant (shader + defines), compiled on first use, once, also under concurrent calls.
// The library caches each kernel's pipeline; getKernelFunction wraps the cached pipeline in a new function object.
// The mutex covers both: PyTorch's library caches are not thread-safe.
class VariantCache {
 public:
  Kernel kernel(const Launch& launch) {
    std::string key = launch.shader;
    std::string prelude;
    for (const auto& [name, value] : launch.defines) {
      key += ";" + name + "=" + value;
      prelude += "#define " + name + " " + value + "\n";
    }
    std::lock_guard<std::mutex> lock(mutex_);
    auto& library = libraries_[key];
    if (!library) {
      library = std::make_unique<MetalShaderLibrary>(prelude + expanded_shader_source(launch.shader), 0,
                                                     metal_compile_options());
    }
    const auto name = profiler_names_.insert("mfa_torch::" + launch.kernel + "[" + key + "]").first;  // nodes stay put
    return {library->getKernelFunction(launch.kernel), &*name};
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<MetalShaderLibrary>> libraries_;
  std::unordered_set<std::string> profiler_names_;
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
    const Kernel kernel = variant_cache().kernel(launch);
    MetalKernelFunction& function = *kernel.function;
    const uint64_t limit = function.getMaxThreadsPerThreadgroup();
    const auto& size = launch.threads_per_threadgroup;
    if (size[0] * size[1] * size[2] > limit) {
      throw std::runtime_error("mfa_torch: kernel " + launch.kernel + " needs " +
                               std::to_string(size[0] * size[1] * size[2]) + " threads per threadgroup, the pipeline " +
                               "allows " + std::to_string(limit));
    }
    const std::array<uint64_t, 3> threads = {launch.threadgroups[0] * size[0], launch.threadgroups[1] * size[1],
                                             launch.threadgroups[2] * size[2]};
    std::vector<at::Tensor> profiled;
    for (const at::Tensor* tensor : bound) {
      if (tensor) profiled.push_back(*tensor);
    }
    function.runCommandBlock([&] {
      // No-ops unless torch.mps.profiler (or PYTORCH_MPS_LOG_PROFILE_INFO) is on, as around PyTorch's own kernels.
      auto& profiler = at::mps::getMPSProfiler();
      profiler.beginProfileKernel(kernel.profiler_name, *kernel.profiler_name, profiled);
      function.startEncoding();
      for (size_t i = 0; i < launch.arguments.size(); i++) {
        const Argument& argument = launch.arguments[i];
        if (bound[i]) {
          function.setArg(argument.index, *bound[i]);
        } else {
          function.setArg(argument.index, argument.bytes.data(), argument.bytes.size());
        }
      }
      // dispatch() takes the total thread count (dispatchThreads); the plan's grid is a whole number of groups.
      function.dispatch(c10::ArrayRef<uint64_t>(threads.data(), 3), c10::ArrayRef<uint64_t>(size.data(), 3));
      profiler.endProfileKernel(kernel.profiler_name);
    });
  }
}

void compile_launch_on_mps(const Launch& launch) { variant_cache().kernel(launch); }

}  // namespace mfa
