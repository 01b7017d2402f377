// Storage of `threadgroup T name[...];` declarations: the driver rewrites each into a call of
// threadgroup_object, which places the object in the threadgroup's memory when first reached.
#pragma once
#include "../../runtime/threadgroup.hpp"

namespace msl_rt {

inline std::atomic<int> next_threadgroup_slot{0};

template <class T, int Declaration> T& threadgroup_object(MSL_SITE_PARAM) {
  static const int slot = next_threadgroup_slot++;  // one per declaration and type (templates)
  if (slot >= max_threadgroup_declarations) thread_fail(msl_site, "too many threadgroup declarations for the emulator");
  ThreadgroupMemory& memory = group().memory;
  unsigned char* p = memory.object(slot, sizeof(T), alignof(T));
  if (!p)
    thread_fail(msl_site, format("threadgroup memory exceeds 32 KiB: this declaration needs %zu bytes, %zu are in use "
                                 "(%zu of them dynamic); the limit is %zu",
                                 sizeof(T), memory.counted.load(std::memory_order_relaxed), memory.dynamic_bytes,
                                 threadgroup_memory_limit));
  return *reinterpret_cast<T*>(p);
}

}  // namespace msl_rt
