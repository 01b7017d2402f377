// The counting side of profile builds (see counters.hpp): where a counted event lands, and the instrumentation
// callbacks g++'s -fsanitize=thread emits. Every function here is compiled without instrumentation (a callback that
// touched instrumented code would call itself) and reads only plain memory.
#pragma once
#include "counters.hpp"
#include "stack_layout.hpp"

#if defined(MSL_PROFILE)
#define MSL_UNCOUNTED __attribute__((no_sanitize_thread))

namespace msl_rt {

// What the OS thread is running: a GPU thread (its tally) or the scheduler (none), and where memory lies.
struct ProfileContext {
  ThreadTally* thread = nullptr;  // null while the scheduler runs
  Tally* tally = nullptr;         // the worker's totals
  uintptr_t arena = 0, arena_end = 0;
  int ranges = 0;
  uintptr_t lo[31] = {}, hi[31] = {};
  bool device[31] = {};           // device (else constant) address space
};
inline thread_local ProfileContext tl_profile;

// `by_shim`: an event the shim counts for the kernel from inside its quiet code (a shuffle).
MSL_UNCOUNTED inline void count(Counter c, uint64_t n, bool by_shim = false) {
  ProfileContext& p = tl_profile;
  if (p.thread && (!p.thread->quiet || by_shim)) p.tally->counts[c] += n;
}

// One access by the running GPU thread, classified by address; `moved`: the bytes it reads plus writes.
// Most accesses of unoptimised code are to the running function's own frame: they are let go first, without
// reaching the thread-local context (a function call in a shared library). Above a frame of a fiber lie its stack,
// the next fibers' stacks and the unmapped tail (stack_layout.hpp): thread memory, never the kernel's buffers.
// `by_shim`: an access the shim makes for the kernel inside its quiet code (a lane's part of a simdgroup_load).
MSL_UNCOUNTED inline void count_access(const void* address, uint64_t moved, bool by_shim = false) {
  if (reinterpret_cast<uintptr_t>(address) - reinterpret_cast<uintptr_t>(__builtin_frame_address(0)) < stacks_tail_guard)
    return;
  ProfileContext& p = tl_profile;
  if (!p.thread || (p.thread->quiet && !by_shim)) return;
  uintptr_t a = reinterpret_cast<uintptr_t>(address);
  uint64_t* counts = p.tally->counts;
  if (a >= p.arena && a < p.arena_end) {
    counts[threadgroup_bytes] += moved;
    counts[threadgroup_accesses] += 1;
    return;
  }
  for (int i = 0; i < p.ranges; i++)
    if (a >= p.lo[i] && a < p.hi[i]) {
      counts[p.device[i] ? device_bytes : constant_bytes] += moved;
      counts[p.device[i] ? device_accesses : constant_accesses] += 1;
      return;
    }
}

MSL_UNCOUNTED inline void count_tile_registers(int64_t delta) {
  ProfileContext& p = tl_profile;
  if (!p.thread) return;
  p.thread->tile_registers += uint64_t(delta);
  if (p.thread->tile_registers > p.tally->peak_tile_registers) p.tally->peak_tile_registers = p.thread->tile_registers;
}

MSL_UNCOUNTED inline int mma_type_index(int a, int b, int c, int d) {
  return ((a * mma_types + b) * mma_types + c) * mma_types + d;
}
MSL_UNCOUNTED inline void count_mma(int type_index) {
  ProfileContext& p = tl_profile;
  if (!p.thread) return;
  p.tally->counts[mma] += 1;
  p.tally->mma_by_type[type_index] += 1;
}

// Shim and runtime code whose own accesses and conversions are not the kernel's: SIMD-group functions that move the
// kernel's data themselves (and count it as Metal defines it), barriers, the runtime's bookkeeping. Per GPU thread,
// so it may span a wait at a barrier.
struct Quiet {
  MSL_UNCOUNTED Quiet() {
    if (tl_profile.thread) tl_profile.thread->quiet++;
  }
  MSL_UNCOUNTED ~Quiet() {
    if (tl_profile.thread) tl_profile.thread->quiet--;
  }
  Quiet(const Quiet&) = delete;
};

}  // namespace msl_rt

#define MSL_COUNT(counter, n) ::msl_rt::count(::msl_rt::counter, n)
#define MSL_COUNT_BY_SHIM(counter, n) ::msl_rt::count(::msl_rt::counter, n, true)
#define MSL_QUIET ::msl_rt::Quiet msl_quiet_scope

// ---- ThreadSanitizer's instrumentation entry points, as counters ----------------------------------------------
// Defined once, in the runtime's object (runtime/definitions.cpp), hidden: each kernel library counts into its own.
#if defined(MSL_RUNTIME_DEFINITIONS)
#pragma GCC visibility push(hidden)
extern "C" {
#define MSL_ACCESS(N)                                                                                                  \
  MSL_UNCOUNTED void __tsan_read##N(void* a) { ::msl_rt::count_access(a, N); }                                         \
  MSL_UNCOUNTED void __tsan_write##N(void* a) { ::msl_rt::count_access(a, N); }                                        \
  MSL_UNCOUNTED void __tsan_unaligned_read##N(void* a) { ::msl_rt::count_access(a, N); }                               \
  MSL_UNCOUNTED void __tsan_unaligned_write##N(void* a) { ::msl_rt::count_access(a, N); }
MSL_ACCESS(1)
MSL_ACCESS(2)
MSL_ACCESS(4)
MSL_ACCESS(8)
MSL_ACCESS(16)
#undef MSL_ACCESS
MSL_UNCOUNTED void __tsan_read_range(void* a, unsigned long n) { ::msl_rt::count_access(a, n); }
MSL_UNCOUNTED void __tsan_write_range(void* a, unsigned long n) { ::msl_rt::count_access(a, n); }
MSL_UNCOUNTED void __tsan_init() {}
MSL_UNCOUNTED void __tsan_func_entry(void*) {}
MSL_UNCOUNTED void __tsan_func_exit() {}
MSL_UNCOUNTED void __tsan_vptr_update(void*, void*) {}
MSL_UNCOUNTED void __tsan_vptr_read(void*) {}

// Atomics, performed sequentially consistent and not counted here: the kernel's go through the shim's atomic
// functions (msl/atomic.hpp), which count each as one access; the others are the runtime's.
#define MSL_ATOMICS(N, T)                                                                                              \
  MSL_UNCOUNTED T __tsan_atomic##N##_load(const volatile T* a, int) {                                                  \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                                       \
  }                                                                                                                    \
  MSL_UNCOUNTED void __tsan_atomic##N##_store(volatile T* a, T v, int) {                                               \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                          \
  }                                                                                                                    \
  MSL_ATOMIC_RMW(N, T, exchange, exchange_n) MSL_ATOMIC_RMW(N, T, fetch_add, fetch_add)                                \
  MSL_ATOMIC_RMW(N, T, fetch_sub, fetch_sub)                                                                           \
  MSL_ATOMIC_RMW(N, T, fetch_and, fetch_and) MSL_ATOMIC_RMW(N, T, fetch_or, fetch_or)                                  \
  MSL_ATOMIC_RMW(N, T, fetch_xor, fetch_xor) MSL_ATOMIC_RMW(N, T, fetch_nand, fetch_nand)                              \
  MSL_UNCOUNTED int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                   \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                            \
  }                                                                                                                    \
  MSL_UNCOUNTED int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                     \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                            \
  }                                                                                                                    \
  MSL_UNCOUNTED T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                         \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                                  \
    return c;                                                                                                          \
  }
#define MSL_ATOMIC_RMW(N, T, OP, BUILTIN)                                                                              \
  MSL_UNCOUNTED T __tsan_atomic##N##_##OP(volatile T* a, T v, int) {                                                   \
    return __atomic_##BUILTIN(a, v, __ATOMIC_SEQ_CST);                                                                 \
  }
MSL_ATOMICS(8, unsigned char)
MSL_ATOMICS(16, unsigned short)
MSL_ATOMICS(32, unsigned int)
MSL_ATOMICS(64, unsigned long long)
#undef MSL_ATOMICS
#undef MSL_ATOMIC_RMW
MSL_UNCOUNTED void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
MSL_UNCOUNTED void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
}
#pragma GCC visibility pop
#endif

#else
#define MSL_COUNT(counter, n) ((void)0)
#define MSL_COUNT_BY_SHIM(counter, n) ((void)0)
#define MSL_QUIET ((void)0)
#endif
