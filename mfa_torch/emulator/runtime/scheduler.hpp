// Runs one threadgroup's fibers with Metal's rules, strictly:
// - a threadgroup_barrier completes when every live thread waits at the same source site;
// - a SIMD-group function completes when every live lane of its SIMD-group waits at the same site;
// - anything else (threads at different barriers, a thread returning while others wait, a SIMD-group
//   function reached by only part of the live lanes) is reported instead of guessed at.
// Each pass runs every runnable fiber until it blocks; counters kept as fibers block make the
// release decisions cheap (no scan of all threads per synchronisation point).
#pragma once
#include "profile_hooks.hpp"
#include "threadgroup.hpp"

namespace msl_rt {

inline std::string waiting_at(const Group& g, int t) {
  const Thread& th = g.threads[t];
  return format("%s at %s", th.op.load(std::memory_order_relaxed), where(th.site()).c_str());
}

inline std::string lane_list(uint32_t mask) {
  std::string s;
  for (int l = 0; l < simd_width; l++) {
    if (!(mask >> l & 1)) continue;
    int e = l;
    while (e + 1 < simd_width && (mask >> (e + 1) & 1)) e++;
    s += (s.empty() ? "" : ",") + (e > l ? format("%d-%d", l, e) : format("%d", l));
    l = e;
  }
  return s;
}

inline bool same_site(const Group& g, int a, int b) { return g.threads[a].site() == g.threads[b].site(); }

inline bool scheduler_fail(Group& g, const std::string& what) {
  g.error = what + " [" + describe_group(g) + "]";
  return false;
}

inline void fiber_main() {
  Group& g = group();
  san_after_switch(&g.scheduler_san);
  g.kernel_entry();
  leave_fiber(g, &g.end_sync);  // everything a thread wrote is visible after the launch
}

inline void count_simd_waiter(Group& g, int t) {
  SimdGroup& sg = g.simdgroups[t / simd_width];
  sg.waiting++;
  if (sg.first < 0) sg.first = t;
  else if (sg.other < 0 && !same_site(g, t, sg.first)) sg.other = t;
}

inline void mark_dirty(Group& g, int s) {
  if (!g.simdgroups[s].dirty) g.simdgroups[s].dirty = true, g.dirty_simdgroups.push_back(s);
}

// Bookkeeping after fiber t switched back to the scheduler.
inline void note_blocked(Group& g, int t) {
  SimdGroup& sg = g.simdgroups[t / simd_width];
  switch (g.threads[t].wait.load(std::memory_order_relaxed)) {
    case Wait::done:
      g.live--;
      sg.live--;
      if (sg.waiting) mark_dirty(g, t / simd_width);  // the lanes left may now all be waiting
      break;
    case Wait::barrier:
      g.at_barrier++;
      if (g.barrier_first < 0) g.barrier_first = t;
      else if (g.barrier_other < 0 && !same_site(g, t, g.barrier_first)) g.barrier_other = t;
      break;
    case Wait::simd:
      count_simd_waiter(g, t);
      mark_dirty(g, t / simd_width);
      break;
    case Wait::running:
      break;
  }
}

// Release the lanes of SIMD-group s waiting at lane `first`'s site.
inline void release_simd_lanes(Group& g, int s, int first) {
  SimdGroup& sg = g.simdgroups[s];
  int base = s * simd_width, end = std::min(g.n, base + simd_width);
  uint32_t mask = 0;
  for (int t = base; t < end; t++)
    if (g.threads[t].wait.load(std::memory_order_relaxed) == Wait::simd && same_site(g, t, first)) mask |= 1u << (t - base);
  sg.waiting = 0, sg.first = -1, sg.other = -1;
  for (int t = base; t < end; t++) {
    if (mask >> (t - base) & 1) {
      g.threads[t].lanes.store(mask, std::memory_order_relaxed);
      g.threads[t].wait.store(Wait::running, std::memory_order_relaxed);
      g.runnable.push_back(t);
    } else if (g.threads[t].wait.load(std::memory_order_relaxed) == Wait::simd) {
      count_simd_waiter(g, t);  // permissive mode: lanes at another site run after the released ones block
    }
  }
  sg.pending.store(1, std::memory_order_relaxed);
  g.sync_points += uint64_t(__builtin_popcount(mask));
}

// A SIMD-group with waiting lanes and no running lane: release it, or report why it cannot be.
inline bool settle_simdgroup(Group& g, int s, bool strict) {
  SimdGroup& sg = g.simdgroups[s];
  if (sg.waiting == 0) return true;
  if (strict && sg.waiting < sg.live) {
    int base = s * simd_width, end = std::min(g.n, base + simd_width);
    uint32_t at_simd = 0, elsewhere = 0;
    int other = -1;
    for (int t = base; t < end; t++) {
      Wait w = g.threads[t].wait.load(std::memory_order_relaxed);
      if (w == Wait::simd) at_simd |= 1u << (t - base);
      else if (w != Wait::done) elsewhere |= 1u << (t - base), other = other < 0 ? t : other;
    }
    return scheduler_fail(g, where(g.threads[sg.first].site()) + ": " + g.threads[sg.first].op.load() +
                                 " reached by only part of SIMD-group " + std::to_string(s) + " (lanes " + lane_list(at_simd) +
                                 "); lanes " + lane_list(elsewhere) + " are live but wait at " + waiting_at(g, other));
  }
  if (strict && sg.other >= 0)
    return scheduler_fail(g, where(g.threads[sg.first].site()) + ": lanes of SIMD-group " + std::to_string(s) +
                                 " wait at different SIMD-group functions: lane " + std::to_string(sg.first % simd_width) +
                                 " at " + waiting_at(g, sg.first) + ", lane " + std::to_string(sg.other % simd_width) + " at " +
                                 waiting_at(g, sg.other));
  release_simd_lanes(g, s, sg.first);
  return true;
}

// Nothing runs and no SIMD-group can be released: every live thread must be at one barrier. (A GPU
// deadlock shows up here as its cause: threads at different barriers or a thread that returned; a
// thread still waiting at a SIMD-group function would mean a scheduler bug, reported all the same.)
inline bool settle_barrier(Group& g) {
  if (g.at_barrier < g.live) {
    for (int t = 0; t < g.n; t++)
      if (g.threads[t].wait.load(std::memory_order_relaxed) == Wait::simd)
        return scheduler_fail(g, "deadlock: " + describe_thread(g, t) + " waits at " + waiting_at(g, t) +
                                     ", which its SIMD-group cannot complete");
    return scheduler_fail(g, "deadlock: no thread can make progress");
  }
  if (g.barrier_other >= 0)
    return scheduler_fail(g, where(g.threads[g.barrier_other].site()) + ": threads wait at different barriers: " +
                                 describe_thread(g, g.barrier_first) + " at " + waiting_at(g, g.barrier_first) + ", " +
                                 describe_thread(g, g.barrier_other) + " at " + waiting_at(g, g.barrier_other));
  if (g.live < g.n) {
    int returned = 0;
    while (g.threads[returned].wait.load(std::memory_order_relaxed) != Wait::done) returned++;
    return scheduler_fail(g, where(g.threads[g.barrier_first].site()) + ": " + describe_thread(g, returned) +
                                 " returned while other threads wait at " + waiting_at(g, g.barrier_first));
  }
  for (int t = 0; t < g.n; t++) {
    g.threads[t].wait.store(Wait::running, std::memory_order_relaxed);
    g.runnable.push_back(t);
  }
  g.sync_points += uint64_t(g.n);
#if defined(MSL_PROFILE)
  g.tally.counts[barriers] += 1;  // once per threadgroup
#endif
  g.at_barrier = 0, g.barrier_first = -1, g.barrier_other = -1;
  return true;
}

inline void reset_threadgroup(Group& g) {
  for (int t = 0; t < g.n; t++) {
    char* bottom = g.stacks + size_t(t) * (fiber_stack_size + guard_size) + guard_size;
    san_create(g.threads[t].san, bottom, fiber_stack_size);
    g.threads[t].sp = fiber_initial_sp(bottom + fiber_stack_size, &fiber_main);
    g.threads[t].wait.store(Wait::running, std::memory_order_relaxed);
    g.threads[t].tally = ThreadTally{};
  }
  for (int s = 0; s < (g.n + simd_width - 1) / simd_width; s++) {
    SimdGroup& sg = g.simdgroups[s];
    sg.live = std::min(simd_width, g.n - s * simd_width);
    sg.waiting = 0, sg.first = -1, sg.other = -1, sg.dirty = false;
    sg.pending.store(0, std::memory_order_relaxed);
  }
  g.runnable.clear();
  for (int t = 0; t < g.n; t++) g.runnable.push_back(t);
  g.dirty_simdgroups.clear();
  g.live = g.n, g.at_barrier = 0, g.barrier_first = -1, g.barrier_other = -1;
  g.memory.start_threadgroup();
}

// Runs one threadgroup to completion. Returns false (with g.error set) on a kernel error.
inline bool run_threadgroup(Group& g, bool strict) {
  reset_threadgroup(g);
  tl_group = &g;
  san_current(g.scheduler_san);
  while (g.live > 0) {
    g.next_runnable.swap(g.runnable);
    g.runnable.clear();
    for (int t : g.next_runnable) {
      g.current.store(t, std::memory_order_relaxed);
      san_before_switch(g.threads[t].san, true);
#if defined(MSL_PROFILE)
      tl_profile.thread = &g.threads[t].tally;  // what runs now is the kernel's
#endif
      msl_fiber_switch(&g.scheduler_sp, g.threads[t].sp);
#if defined(MSL_PROFILE)
      tl_profile.thread = nullptr;
#endif
      san_after_switch(nullptr);
      if (g.failed.load(std::memory_order_acquire)) return false;
      note_blocked(g, t);
    }
    g.current.store(-1, std::memory_order_relaxed);
    if (g.live == 0) break;
    for (int s : g.dirty_simdgroups) {
      g.simdgroups[s].dirty = false;
      if (!settle_simdgroup(g, s, strict)) return false;
    }
    g.dirty_simdgroups.clear();
    if (g.runnable.empty() && !settle_barrier(g)) return false;
  }
  san_acquire(&g.end_sync);
  return true;
}

}  // namespace msl_rt
