// A threadgroup's memory: dynamic [[threadgroup(i)]] buffers first, then the static `threadgroup`
// declarations in the order threads first reach them. At most 32 KiB, counted as Metal does (16-byte
// aligned objects). Every threadgroup starts with the bytes poisoned (all bits set: NaN for float/half).
// In the bounds-checked build, every object is followed by a redzone and everything outside objects is
// poisoned for AddressSanitizer, so overflowing a threadgroup array is reported too.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#if defined(MSL_CHECK_BOUNDS)
#include <sanitizer/asan_interface.h>
#endif

namespace msl_rt {

constexpr size_t threadgroup_memory_limit = 32768;
constexpr int max_threadgroup_declarations = 4096;  // distinct `threadgroup` declarations per library
#if defined(MSL_CHECK_BOUNDS)
constexpr size_t threadgroup_redzone = 64;
#else
constexpr size_t threadgroup_redzone = 0;
#endif

struct ThreadgroupMemory {
  // room for the objects and a redzone after each of at most 31 + 64 of them
  static constexpr size_t arena_size = threadgroup_memory_limit + (threadgroup_redzone ? 96 * threadgroup_redzone : 0);
  alignas(64) unsigned char bytes[arena_size];
  size_t dynamic_offset[31] = {}, dynamic_size[31] = {};
  size_t dynamic_bytes = 0;
  // Atomics: the first GPU thread to reach a declaration places it, and ThreadSanitizer must not see
  // that bookkeeping as a race between GPU threads (they all run on one OS thread).
  std::atomic<size_t> counted{0};    // bytes counted against the limit
  std::atomic<size_t> arena_end{0};  // end of the used arena, redzones included
  std::unique_ptr<std::atomic<size_t>[]> static_offset{new std::atomic<size_t>[max_threadgroup_declarations]};  // +1; 0: none
  std::unique_ptr<std::atomic<size_t>[]> static_size{new std::atomic<size_t>[max_threadgroup_declarations]};

  static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

  // Offset of a new object, or SIZE_MAX if it does not fit in 32 KiB.
  size_t place(size_t size, size_t align) {
    align = align < 16 ? 16 : align;
    size_t start = round_up(counted.load(std::memory_order_relaxed), align);
    size_t at = round_up(arena_end.load(std::memory_order_relaxed), align);
    if (start + size > threadgroup_memory_limit || at + size + threadgroup_redzone > arena_size) return SIZE_MAX;
    counted.store(start + size, std::memory_order_relaxed);
    arena_end.store(at + size + threadgroup_redzone, std::memory_order_relaxed);
    unpoison(at, size);
    return at;
  }

  // At launch: lay out the dynamic buffers (sizes already checked against the limit).
  void place_dynamic(const uint32_t sizes[31]) {
    for (int i = 0; i < 31; i++) {
      dynamic_size[i] = sizes[i];
      dynamic_offset[i] = sizes[i] ? place(sizes[i], 16) : 0;
    }
    dynamic_bytes = counted.load(std::memory_order_relaxed);
  }

  // Static declaration `slot`, placed on first use: returns its bytes or nullptr if over the limit.
  unsigned char* object(int slot, size_t size, size_t align) {
    size_t placed = static_offset[slot].load(std::memory_order_relaxed);
    if (placed == 0) {
      size_t at = place(size, align);
      if (at == SIZE_MAX) return nullptr;
      static_size[slot].store(size, std::memory_order_relaxed);
      placed = at + 1;
      static_offset[slot].store(placed, std::memory_order_relaxed);
    }
    return bytes + placed - 1;
  }

  // A new threadgroup: uninitialised contents (poison); outside objects stays unaddressable when checked.
  void start_threadgroup() {
    unpoison(0, arena_size);
    std::memset(bytes, 0xFF, arena_size);
    if (!threadgroup_redzone) return;
    poison(0, arena_size);
    for (int i = 0; i < 31; i++)
      if (dynamic_size[i]) unpoison(dynamic_offset[i], dynamic_size[i]);
    for (int s = 0; s < max_threadgroup_declarations; s++)
      if (size_t placed = static_offset[s].load(std::memory_order_relaxed)) unpoison(placed - 1, static_size[s].load());
  }

 private:
  void poison(size_t offset, size_t size) {
#if defined(MSL_CHECK_BOUNDS)
    ASAN_POISON_MEMORY_REGION(bytes + offset, size);
#endif
    (void)offset, (void)size;
  }
  void unpoison(size_t offset, size_t size) {
#if defined(MSL_CHECK_BOUNDS)
    ASAN_UNPOISON_MEMORY_REGION(bytes + offset, size);
#endif
    (void)offset, (void)size;
  }
};

}  // namespace msl_rt
