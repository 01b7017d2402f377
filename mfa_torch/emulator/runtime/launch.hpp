// A grid launch: threadgroups are handed out to worker OS threads, each running one threadgroup at a time
// as fibers. Errors stop the launch and travel back through the C ABI as text; nothing here aborts.
#pragma once
#include <csetjmp>
#include <mutex>
#include <thread>

#include "faults.hpp"
#include "scheduler.hpp"

// Mirrored field by field by the ctypes Structure in mfa_torch/emulator/library.py.
extern "C" struct msl_launch {
  void* buffers[31];
  uint64_t buffer_bytes[31];
  uint32_t threadgroup_memory[31];  // bytes of each dynamic [[threadgroup(i)]] buffer
  uint32_t grid[3];                 // threads per grid
  uint32_t threadgroup_size[3];
  int32_t os_threads;
  int32_t strict;                   // SIMD-group functions must be reached by every live lane
  double timeout_seconds;           // the launch fails when it runs longer; 0: no limit
  uint64_t sync_points;             // out: barrier and SIMD-group arrivals
  uint8_t buffer_device[31];        // profile builds: 1 for a buffer in the device address space, 0 for constant
  uint64_t profile[msl_rt::profile_slots];  // out, profile builds: counters.hpp's Tally, then threadgroup bytes used
  char error[4096];                 // out: first error, empty on success
};

#if defined(MSL_PROFILE) && defined(MSL_RUNTIME_DEFINITIONS)
extern "C" const int msl_profile_slots = msl_rt::profile_slots;  // checked against emulator/counters.py on load
#endif

#if defined(MSL_CHECK_BOUNDS) || defined(MSL_CHECK_RACES)
extern "C" [[noreturn]] void msl_checked_kernel_error(const char* text);  // runtime/checked_main.hpp
#endif

namespace msl_rt {

using Launch = msl_launch;

struct Kernel {
  const char* name;
  Site definition;  // for errors that belong to no statement (launch configuration)
  void (*entry)();
  uint32_t max_threads;  // [[max_total_threads_per_threadgroup(n)]], else Metal's limit of 1024
};

inline void set_error(Launch& l, const std::string& text) {
  std::snprintf(l.error, sizeof l.error, "%s", text.c_str());
}

inline bool check_configuration(Launch& l, const Kernel& k) {
  uint64_t threads = uint64_t(l.threadgroup_size[0]) * l.threadgroup_size[1] * l.threadgroup_size[2];
  uint32_t limit = std::min(k.max_threads, max_threads_per_threadgroup);
  if (threads > limit) {
    set_error(l, where(k.definition) + format(": kernel %s: threads_per_threadgroup (%u,%u,%u) = %llu threads exceeds %s of %u",
                                              k.name, l.threadgroup_size[0], l.threadgroup_size[1], l.threadgroup_size[2],
                                              (unsigned long long)threads,
                                              limit < max_threads_per_threadgroup ? "the kernel's max_total_threads_per_threadgroup"
                                                                                  : "the limit",
                                              limit));
    return false;
  }
  size_t dynamic = 0;
  for (uint32_t b : l.threadgroup_memory) dynamic += (b + 15) / 16 * 16;
  if (dynamic > threadgroup_memory_limit) {
    set_error(l, where(k.definition) + format(": kernel %s: %zu bytes of dynamic threadgroup memory exceed the limit of %zu bytes",
                                              k.name, dynamic, threadgroup_memory_limit));
    return false;
  }
  return true;
}

// Per worker OS thread: fibers, stacks and threadgroup memory, reused by all its threadgroups.
inline std::unique_ptr<Group> make_group(Launch& l, const Kernel& k) {
  auto g = std::make_unique<Group>();
  g->launch = &l;
  g->kernel_entry = k.entry;
  int capacity = int(l.threadgroup_size[0] * l.threadgroup_size[1] * l.threadgroup_size[2]);
  int simdgroups = (capacity + simd_width - 1) / simd_width;
  g->threads.reset(new Thread[capacity]);
  g->simdgroups.reset(new SimdGroup[simdgroups]);
  g->runnable.reserve(capacity);
  g->next_runnable.reserve(capacity);
  g->dirty_simdgroups.reserve(simdgroups);
  g->stack_count = capacity;
  size_t span = fiber_stack_size + guard_size;
  void* m = mmap(nullptr, stacks_bytes(capacity), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) return nullptr;
  g->stacks = static_cast<char*>(m);
  for (int t = 0; t < capacity; t++) mprotect(g->stacks + span * t, guard_size, PROT_NONE);  // overflow faults
  mprotect(g->stacks + span * capacity, stacks_tail_guard, PROT_NONE);
  g->memory.place_dynamic(l.threadgroup_memory);
  for (int d = 0; d < 3; d++) {
    g->geo.dispatch_size[d] = l.threadgroup_size[d];
    g->geo.grid[d] = l.grid[d];
    g->geo.groups[d] = (l.grid[d] + l.threadgroup_size[d] - 1) / l.threadgroup_size[d];
  }
  return g;
}

#if defined(MSL_PROFILE)
// A worker's view of memory for classifying accesses: its threadgroup memory and the launch's buffers.
inline void start_profile(const Launch& l, Group& g) {
  ProfileContext& p = tl_profile;
  p = ProfileContext{};
  p.tally = &g.tally;
  p.arena = reinterpret_cast<uintptr_t>(g.memory.bytes);
  p.arena_end = p.arena + ThreadgroupMemory::arena_size;
  for (int i = 0; i < 31; i++)
    if (l.buffers[i] && l.buffer_bytes[i]) {
      p.lo[p.ranges] = reinterpret_cast<uintptr_t>(l.buffers[i]);
      p.hi[p.ranges] = p.lo[p.ranges] + l.buffer_bytes[i];
      p.device[p.ranges] = l.buffer_device[i] != 0;
      p.ranges++;
    }
}

inline void finish_profile(Launch& l, const Tally& t, size_t threadgroup_memory) {
  for (int i = 0; i < counter_count; i++) l.profile[i] = t.counts[i];
  for (int i = 0; i < mma_by_type_count; i++) l.profile[profile_mma_by_type + i] = t.mma_by_type[i];
  l.profile[profile_tile_registers] = t.peak_tile_registers;
  l.profile[profile_threadgroup_memory] = threadgroup_memory;
}
#endif

// Returns 0 on success, 1 with l.error set on a kernel error. Compiled once per set of compiler flags
// (runtime/definitions.cpp) and linked into each kernel's library, not compiled with every kernel: its code
// generation was most of a small kernel's compile. Hidden: each library runs its own copy.
__attribute__((visibility("hidden"))) int launch(Launch& l, const Kernel& k);

#if defined(MSL_RUNTIME_DEFINITIONS)
inline void place_threadgroup(Group& g, uint64_t index) {
  const uint32_t* n = g.geo.groups;
  uint32_t pos[3] = {uint32_t(index % n[0]), uint32_t(index / n[0] % n[1]), uint32_t(index / (uint64_t(n[0]) * n[1]))};
  g.n = 1;
  for (int d = 0; d < 3; d++) {
    g.geo.group[d] = pos[d];
    g.geo.size[d] = std::min(g.geo.dispatch_size[d], g.geo.grid[d] - pos[d] * g.geo.dispatch_size[d]);
    g.n *= int(g.geo.size[d]);
  }
}

int launch(Launch& l, const Kernel& k) {
  l.error[0] = 0;
  l.sync_points = 0;
  for (int d = 0; d < 3; d++)
    if (l.grid[d] == 0) return 0;
  if (!check_configuration(l, k)) return 1;
  uint64_t total = 1;
  for (int d = 0; d < 3; d++) total *= (l.grid[d] + l.threadgroup_size[d] - 1) / l.threadgroup_size[d];
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> sync_points{0};
  std::mutex error_lock;
#if defined(MSL_PROFILE)
  std::mutex profile_lock;
  Tally totals;
  size_t threadgroup_memory = 0;
#endif
  auto fail = [&](const std::string& text) {
    std::lock_guard<std::mutex> hold(error_lock);
    if (failed.exchange(true)) return;
    set_error(l, text + " [kernel " + k.name + "]");
#if defined(MSL_CHECK_BOUNDS) || defined(MSL_CHECK_RACES)
    // Tearing down fibers abandoned mid-barrier would look like races or leaks to the sanitizer:
    // the checked-mode child reports the kernel error and exits at once.
    msl_checked_kernel_error(l.error);
#endif
  };
  auto worker = [&] {
    std::unique_ptr<Group> g = make_group(l, k);
    if (!g) return fail("cannot allocate fiber stacks");
    FaultGuard guard(l.timeout_seconds);
#if defined(MSL_PROFILE)
    start_profile(l, *g);
    size_t threadgroup_bytes_used = 0;
#endif
    for (uint64_t i; !failed.load() && (i = next++) < total;) {
      place_threadgroup(*g, i);
      bool ok;
      if (sigsetjmp(guard.jump, 1) == 0) {
        guard.arm(g.get());
        ok = run_threadgroup(*g, l.strict != 0);
      } else {
        ok = false;
        g->error = guard.describe();
      }
      guard.disarm();
      if (!ok) fail(g->error);
#if defined(MSL_PROFILE)
      threadgroup_bytes_used = std::max(threadgroup_bytes_used, g->memory.counted.load(std::memory_order_relaxed));
#endif
    }
    sync_points += g->sync_points;
#if defined(MSL_PROFILE)
    {
      std::lock_guard<std::mutex> hold(profile_lock);
      totals.add(g->tally);
      threadgroup_memory = std::max(threadgroup_memory, threadgroup_bytes_used);
    }
#endif
    tl_group = nullptr;
  };
  int workers = int(std::max<int64_t>(1, std::min<int64_t>(l.os_threads, int64_t(total))));
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; w++) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  l.sync_points = sync_points.load();
#if defined(MSL_PROFILE)
  finish_profile(l, totals, threadgroup_memory);
#endif
  return failed.load() ? 1 : 0;
}
#endif

}  // namespace msl_rt
