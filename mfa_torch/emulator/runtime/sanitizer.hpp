// Hooks that tell AddressSanitizer / ThreadSanitizer about our fibers (checked modes only).
// ThreadSanitizer: switching between fibers carries no happens-before edge, so a missing barrier
// between two GPU threads is reported as a race; barriers and SIMD rendezvous add explicit
// release/acquire edges on a per-group sync object.
#pragma once

#if defined(MSL_CHECK_RACES)
extern "C" {
void* __tsan_get_current_fiber();
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif

#if defined(MSL_CHECK_BOUNDS)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(const volatile void* addr, size_t size);
}
#endif

namespace msl_rt {

struct SanitizerFiber {
#if defined(MSL_CHECK_RACES)
  void* tsan = nullptr;
#endif
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
};

// A fiber stack is reused by the next threadgroup: a finished fiber never unwinds its frames, so their redzones stay
// poisoned and must be cleared before the stack is written again.
inline void san_create(SanitizerFiber& f, const void* bottom, size_t size) {
#if defined(MSL_CHECK_RACES)
  if (!f.tsan) f.tsan = __tsan_create_fiber(0);
#endif
#if defined(MSL_CHECK_BOUNDS)
  __asan_unpoison_memory_region(bottom, size);
#endif
  f.stack_bottom = bottom;
  f.stack_size = size;
}
inline void san_current(SanitizerFiber& f) {  // the scheduler's own context
#if defined(MSL_CHECK_RACES)
  f.tsan = __tsan_get_current_fiber();
#endif
  (void)f;
}
// `synchronize`: scheduler -> fiber switches publish the scheduler's state; fiber -> scheduler
// switches must not, or every fiber would be ordered after every other one.
inline void san_before_switch(const SanitizerFiber& to, bool synchronize) {
#if defined(MSL_CHECK_RACES)
  __tsan_switch_to_fiber(to.tsan, synchronize ? 0 : 1);
#endif
#if defined(MSL_CHECK_BOUNDS)
  __sanitizer_start_switch_fiber(nullptr, to.stack_bottom, to.stack_size);
#endif
  (void)to;
  (void)synchronize;
}
inline void san_after_switch(SanitizerFiber* from_out) {
#if defined(MSL_CHECK_BOUNDS)
  const void* bottom;
  size_t size;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  if (from_out) {
    from_out->stack_bottom = bottom;
    from_out->stack_size = size;
  }
#endif
  (void)from_out;
}
// A null sync object orders nothing (a barrier with mem_flags::mem_none).
inline void san_release(void* sync) {
#if defined(MSL_CHECK_RACES)
  if (sync) __tsan_release(sync);
#endif
  (void)sync;
}
inline void san_acquire(void* sync) {
#if defined(MSL_CHECK_RACES)
  if (sync) __tsan_acquire(sync);
#endif
  (void)sync;
}

}  // namespace msl_rt
