// Profile builds: half is a class holding a _Float16, so that every conversion between half and float is seen
// and counted. half arithmetic stays half (a _Float16 operation, rounded after each one, as in other builds);
// half with an integer is half, half with float is float (MSL's usual arithmetic conversions).
#pragma once
#include <type_traits>

#include "../../runtime/profile_hooks.hpp"

namespace metal {

constexpr void msl_count_conversion() {
  if (!std::is_constant_evaluated()) MSL_COUNT(conversions, 1);
}

struct half {
  _Float16 value;

  half() = default;
  constexpr half(_Float16 v) : value(v) {}
  template <class T> requires std::is_arithmetic_v<T> constexpr half(T v) : value(_Float16(v)) {
    if constexpr (std::is_floating_point_v<T>) msl_count_conversion();
  }
  constexpr operator float() const {
    msl_count_conversion();
    return float(value);
  }
  template <class T> requires std::is_integral_v<T> explicit constexpr operator T() const { return T(value); }

  template <class T> half& operator+=(T o) { return *this = half(*this + o); }
  template <class T> half& operator-=(T o) { return *this = half(*this - o); }
  template <class T> half& operator*=(T o) { return *this = half(*this * o); }
  template <class T> half& operator/=(T o) { return *this = half(*this / o); }
};
static_assert(sizeof(half) == 2 && alignof(half) == 2 && std::is_trivially_copyable_v<half>);

#define MSL_HALF_ARITH(OP)                                                                                          \
  constexpr half operator OP(half a, half b) { return half(_Float16(a.value OP b.value)); }                         \
  template <class T> requires std::is_integral_v<T> constexpr half operator OP(half a, T b) { return a OP half(b); } \
  template <class T> requires std::is_integral_v<T> constexpr half operator OP(T a, half b) { return half(a) OP b; } \
  template <class T> requires std::is_floating_point_v<T> constexpr T operator OP(half a, T b) { return T(float(a)) OP b; } \
  template <class T> requires std::is_floating_point_v<T> constexpr T operator OP(T a, half b) { return a OP T(float(b)); }
MSL_HALF_ARITH(+)
MSL_HALF_ARITH(-)
MSL_HALF_ARITH(*)
MSL_HALF_ARITH(/)
#undef MSL_HALF_ARITH
#define MSL_HALF_COMPARE(OP)                                                                                    \
  constexpr bool operator OP(half a, half b) { return a.value OP b.value; }                                     \
  template <class T> requires std::is_integral_v<T> constexpr bool operator OP(half a, T b) { return a OP half(b); } \
  template <class T> requires std::is_integral_v<T> constexpr bool operator OP(T a, half b) { return half(a) OP b; } \
  template <class T> requires std::is_floating_point_v<T> constexpr bool operator OP(half a, T b) { return T(float(a)) OP b; } \
  template <class T> requires std::is_floating_point_v<T> constexpr bool operator OP(T a, half b) { return a OP T(float(b)); }
MSL_HALF_COMPARE(==)
MSL_HALF_COMPARE(!=)
MSL_HALF_COMPARE(<)
MSL_HALF_COMPARE(<=)
MSL_HALF_COMPARE(>)
MSL_HALF_COMPARE(>=)
#undef MSL_HALF_COMPARE
constexpr half operator-(half a) { return half(_Float16(-a.value)); }
constexpr half operator+(half a) { return a; }

}  // namespace metal
