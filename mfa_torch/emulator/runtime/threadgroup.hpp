// The state of one threadgroup (its GPU threads as fibers, its threadgroup memory) and what a GPU thread
// does to wait: block at a threadgroup barrier or at a SIMD-group function until the scheduler
// (scheduler.hpp) releases it.
#pragma once
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <source_location>
#include <string>
#include <vector>

#include "counters.hpp"
#include "fiber.hpp"
#include "profile_hooks.hpp"
#include "stack_layout.hpp"
#include "sanitizer.hpp"
#include "threadgroup_memory.hpp"

struct msl_launch;  // runtime/launch.hpp

namespace msl_rt {

constexpr int simd_width = 32;
constexpr uint32_t max_threads_per_threadgroup = 1024;

// A source location in the .metal file (through #line), captured by a defaulted
// std::source_location parameter at the call site: g++ may duplicate or merge calls, source lines stay.
struct Site {
  const char* file = nullptr;
  int line = 0;
  Site() = default;
  Site(const char* f, int l) : file(f), line(l) {}
  Site(const std::source_location& loc) : file(loc.file_name()), line(int(loc.line())) {}
  bool operator==(const Site& o) const { return line == o.line && (file == o.file || std::strcmp(file, o.file) == 0); }
};
#define MSL_SITE_PARAM std::source_location msl_site = std::source_location::current()

enum class Wait : uint8_t { running, barrier, simd, done };

// State of one GPU thread. Fields shared with the scheduler are relaxed atomics only so that
// ThreadSanitizer sees the runtime's own bookkeeping as synchronised (they compile to plain moves).
struct Thread {
  void* sp = nullptr;
  std::atomic<Wait> wait{Wait::done};
  std::atomic<const char*> site_file{nullptr};
  std::atomic<int> site_line{0};
  std::atomic<const char*> op{nullptr};       // "threadgroup_barrier", "simd_sum", ... for messages
  std::atomic<uint32_t> lanes{0};             // lanes released together at the last SIMD rendezvous
  std::atomic<const void*> simd_in{nullptr};  // this lane's argument of the pending SIMD-group function
  std::atomic<void*> simd_out{nullptr};       // where its result goes
  SanitizerFiber san;
  ThreadTally tally;  // profile builds

  Site site() const { return Site{site_file.load(std::memory_order_relaxed), site_line.load(std::memory_order_relaxed)}; }
};

// Scheduler bookkeeping of one SIMD-group.
struct SimdGroup {
  int live = 0;              // lanes not finished
  int waiting = 0;           // lanes parked at a SIMD-group function
  int first = -1, other = -1;  // first waiting lane; first lane waiting at a different site
  bool dirty = false;        // may have become releasable during this pass
  std::atomic<uint8_t> pending{0};  // released, results not computed yet
  char sync = 0;             // ThreadSanitizer sync object
};

// Where one threadgroup sits in the grid.
struct Geometry {
  uint32_t group[3];          // threadgroup_position_in_grid
  uint32_t size[3];           // threads_per_threadgroup (smaller for the last groups of dispatch_threads)
  uint32_t dispatch_size[3];  // the requested threadgroup size
  uint32_t groups[3];         // threadgroups_per_grid
  uint32_t grid[3];           // threads_per_grid
};

struct Group {
  const msl_launch* launch = nullptr;
  void (*kernel_entry)() = nullptr;
  Geometry geo{};
  int n = 0;                     // threads in this threadgroup
  std::atomic<int> current{-1};  // fiber now running (atomic: written by the scheduler, read by fibers)
  std::unique_ptr<Thread[]> threads;
  std::unique_ptr<SimdGroup[]> simdgroups;
  char* stacks = nullptr;
  int stack_count = 0;
  void* scheduler_sp = nullptr;
  SanitizerFiber scheduler_san;
  char barrier_sync = 0, end_sync = 0;  // ThreadSanitizer sync objects

  // scheduler bookkeeping
  std::vector<int> runnable, next_runnable, dirty_simdgroups;
  int live = 0, at_barrier = 0;
  int barrier_first = -1, barrier_other = -1;  // first thread at the barrier; first one at a different site

  ThreadgroupMemory memory;

  std::atomic<bool> failed{false};
  std::string error;
  uint64_t sync_points = 0;
  Tally tally;  // profile builds: this worker's counts over its threadgroups

  Group() = default;
  Group(const Group&) = delete;
  ~Group() {
    if (stacks) munmap(stacks, stacks_bytes(stack_count));
  }
};

inline thread_local Group* tl_group = nullptr;
inline Group& group() { return *tl_group; }
inline Thread& me() { return tl_group->threads[tl_group->current]; }
inline uint32_t lane_id() { return uint32_t(tl_group->current) % simd_width; }

// ---- messages ---------------------------------------------------------------------------------------

inline std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}
inline std::string where(const Site& s) { return format("%s:%d", s.file ? s.file : "?", s.line); }

inline std::string describe_thread(const Group& g, int t) {
  uint32_t x = t % g.geo.size[0], y = (t / g.geo.size[0]) % g.geo.size[1], z = t / (g.geo.size[0] * g.geo.size[1]);
  return format("thread %d (position (%u,%u,%u), lane %d of SIMD-group %d)", t, x, y, z, t % simd_width, t / simd_width);
}
inline std::string describe_group(const Group& g) {
  return format("threadgroup (%u,%u,%u)", g.geo.group[0], g.geo.group[1], g.geo.group[2]);
}

// ---- inside a fiber ---------------------------------------------------------------------------------

inline void switch_to_scheduler(Group& g) {
  Thread& t = g.threads[g.current];
  san_before_switch(g.scheduler_san, false);
  msl_fiber_switch(&t.sp, g.scheduler_sp);
  san_after_switch(nullptr);
}

// The last switch out of a fiber. Everything it reads is copied before the fiber publishes its
// history (`sync`), so ThreadSanitizer orders all of the fiber's accesses before the scheduler's
// teardown of the group.
[[noreturn]] inline void leave_fiber(Group& g, void* sync) {
  Thread& t = g.threads[g.current];
  void** save = &t.sp;
  void* scheduler_sp = g.scheduler_sp;
  SanitizerFiber scheduler = g.scheduler_san;
  t.wait.store(Wait::done, std::memory_order_relaxed);
  san_release(sync);
  san_before_switch(scheduler, false);
  msl_fiber_switch(save, scheduler_sp);
  __builtin_trap();  // a finished or failed fiber is never resumed
}

// Records the error and never returns (the launch is abandoned).
[[noreturn]] inline void thread_fail(const Site& site, const std::string& what) {
  Group& g = group();
  g.error = where(site) + ": " + what + " [" + describe_group(g) + ", " + describe_thread(g, g.current) + "]";
  g.failed.store(true, std::memory_order_release);
  leave_fiber(g, &g.end_sync);
}

// Park the current fiber until the scheduler releases it.
inline void block(Wait kind, const char* op, const Site& site, void* sync) {
  MSL_QUIET;
  Group& g = group();
  Thread& t = g.threads[g.current];
  t.op.store(op, std::memory_order_relaxed);
  t.site_file.store(site.file, std::memory_order_relaxed);
  t.site_line.store(site.line, std::memory_order_relaxed);
  t.wait.store(kind, std::memory_order_relaxed);
  san_release(sync);
  switch_to_scheduler(g);
  san_acquire(sync);
}

// `orders_memory`: false for mem_flags::mem_none, an execution barrier only: in the race-checked build,
// accesses on either side of it are then not ordered.
inline void threadgroup_barrier_wait(const Site& site, bool orders_memory) {
  block(Wait::barrier, "threadgroup_barrier", site, orders_memory ? &group().barrier_sync : nullptr);
}

// A SIMD-group function: every active lane posts a pointer to its argument and to its result slot; once
// the SIMD-group is released, the first lane to resume computes all results with
// combine(const In* const in[32], Out* const out[32], uint32_t active_lanes).
// Like lockstep hardware, it orders the lanes' memory accesses unless `orders_memory` is false
// (simdgroup_barrier(mem_flags::mem_none)).
template <class Out, class In, class Combine>
Out simd_collective(const char* op, const Site& site, const In& in, Combine&& combine, bool orders_memory = true) {
  MSL_QUIET;
  Group& g = group();
  int self = g.current, base = self / simd_width * simd_width;
  SimdGroup& sg = g.simdgroups[self / simd_width];
  Out out{};
  g.threads[self].simd_in.store(&in, std::memory_order_relaxed);
  g.threads[self].simd_out.store(&out, std::memory_order_relaxed);
  void* sync = orders_memory ? &sg.sync : nullptr;
  block(Wait::simd, op, site, sync);
  if (sg.pending.exchange(0, std::memory_order_relaxed)) {
    uint32_t active = g.threads[self].lanes.load(std::memory_order_relaxed);
    const In* ins[simd_width] = {};
    Out* outs[simd_width] = {};
    for (int l = 0; l < simd_width; l++) {
      if (!(active >> l & 1)) continue;
      ins[l] = static_cast<const In*>(g.threads[base + l].simd_in.load(std::memory_order_relaxed));
      outs[l] = static_cast<Out*>(g.threads[base + l].simd_out.load(std::memory_order_relaxed));
    }
    combine(ins, outs, active);
    san_release(sync);
  }
  return out;
}

}  // namespace msl_rt
