// MSL atomics (relaxed). Implemented with the compiler's atomic builtins so that they are atomic across
// threadgroups running on different OS threads and visible as atomics to ThreadSanitizer.
#pragma once
#include "scalar.hpp"

namespace metal {

enum memory_order { memory_order_relaxed, memory_order_acquire, memory_order_release, memory_order_acq_rel, memory_order_seq_cst };

template <class T> struct atomic {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "MSL atomics are 32- or 64-bit");
  T value;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
typedef atomic<ulong> atomic_ulong;
typedef atomic<long> atomic_long;
template <class T> using msl_atomic_bits_t = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
template <class T> msl_atomic_bits_t<T>* msl_atomic_bits(const volatile atomic<T>* object) {
  return const_cast<msl_atomic_bits_t<T>*>(reinterpret_cast<const volatile msl_atomic_bits_t<T>*>(&object->value));
}

// Profile builds: an atomic operation is one access of the kernel, moving the value once (load, store) or twice
// (read-modify-write), however many compare-and-swap attempts the emulator makes; those are quiet.
template <class T> void msl_count_atomic(const volatile atomic<T>* object, bool read_modify_write) {
#if defined(MSL_PROFILE)
  msl_rt::count_access(const_cast<const atomic<T>*>(object), (read_modify_write ? 2 : 1) * sizeof(T));
#endif
  (void)object, (void)read_modify_write;
}

// Every update is a compare-and-swap loop on the bits: one code path for int, uint and float.
template <class T, class F> T msl_atomic_update(volatile atomic<T>* object, F f) {
  msl_count_atomic(object, true);
  MSL_QUIET;
  using Bits = msl_atomic_bits_t<T>;
  Bits* bits = msl_atomic_bits(object);
  Bits old = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T current = std::bit_cast<T>(old);
    Bits next = std::bit_cast<Bits>(T(f(current)));
    if (__atomic_compare_exchange_n(bits, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return current;
  }
}

template <class T, class U> void atomic_store_explicit(volatile atomic<T>* object, U desired, memory_order = memory_order_relaxed) {
  msl_count_atomic(object, false);
  MSL_QUIET;
  __atomic_store_n(msl_atomic_bits(object), std::bit_cast<msl_atomic_bits_t<T>>(T(desired)), __ATOMIC_RELAXED);
}
template <class T> T atomic_load_explicit(const volatile atomic<T>* object, memory_order = memory_order_relaxed) {
  msl_count_atomic(object, false);
  MSL_QUIET;
  return std::bit_cast<T>(__atomic_load_n(msl_atomic_bits(object), __ATOMIC_RELAXED));
}
template <class T, class U> T atomic_exchange_explicit(volatile atomic<T>* object, U desired, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T) { return T(desired); });
}
template <class T, class U> T atomic_fetch_add_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return v + T(operand); });
}
template <class T, class U> T atomic_fetch_sub_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return v - T(operand); });
}
template <class T, class U> T atomic_fetch_and_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return v & T(operand); });
}
template <class T, class U> T atomic_fetch_or_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return v | T(operand); });
}
template <class T, class U> T atomic_fetch_xor_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return v ^ T(operand); });
}
template <class T, class U> T atomic_fetch_min_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return T(operand) < v ? T(operand) : v; });
}
template <class T, class U> T atomic_fetch_max_explicit(volatile atomic<T>* object, U operand, memory_order = memory_order_relaxed) {
  return msl_atomic_update(object, [&](T v) { return T(operand) > v ? T(operand) : v; });
}
template <class T, class U>
bool atomic_compare_exchange_weak_explicit(volatile atomic<T>* object, T* expected, U desired, memory_order = memory_order_relaxed,
                                           memory_order = memory_order_relaxed) {
  msl_count_atomic(object, true);
  MSL_QUIET;
  using Bits = msl_atomic_bits_t<T>;
  Bits* bits = msl_atomic_bits(object);
  Bits want = std::bit_cast<Bits>(*expected), next = std::bit_cast<Bits>(T(desired));
  bool ok = __atomic_compare_exchange_n(bits, &want, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  *expected = std::bit_cast<T>(want);
  return ok;
}
template <class T, class U>
bool atomic_compare_exchange_strong_explicit(volatile atomic<T>* object, T* expected, U desired, memory_order a = memory_order_relaxed,
                                             memory_order b = memory_order_relaxed) {
  return atomic_compare_exchange_weak_explicit(object, expected, desired, a, b);
}

}  // namespace metal
