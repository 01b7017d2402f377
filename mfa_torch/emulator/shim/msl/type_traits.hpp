// <metal_type_traits>, numeric_limits and metal::array: the standard ones, with half and bfloat as
// floating types.
#pragma once
#include <array>
#include <limits>
#include <type_traits>

#include "scalar.hpp"

namespace metal {

using std::conditional;
using std::conditional_t;
using std::enable_if;
using std::enable_if_t;
using std::integral_constant;
using std::is_integral;
using std::is_integral_v;
using std::is_same;
using std::is_same_v;
using std::is_signed;
using std::is_signed_v;
using std::is_unsigned;
using std::is_unsigned_v;
using std::make_signed_t;
using std::make_unsigned_t;
using std::remove_cv_t;
using std::remove_reference_t;
template <class T, size_t N> using array = std::array<T, N>;

template <class T> struct is_floating_point : std::bool_constant<msl_floating<std::remove_cv_t<T>>> {};
template <class T> constexpr bool is_floating_point_v = is_floating_point<T>::value;
template <class T> struct is_arithmetic : std::bool_constant<msl_scalar<std::remove_cv_t<T>>> {};
template <class T> constexpr bool is_arithmetic_v = is_arithmetic<T>::value;

template <class T> struct numeric_limits : std::numeric_limits<T> {};
// Limits of a 16-bit float with `mantissa` stored bits and `exponent` bits, from their bit patterns.
template <class T, int Mantissa, int Exponent> struct msl_narrow_float_limits {
  static constexpr bool is_specialized = true, is_signed = true, is_integer = false, has_infinity = true,
                        has_quiet_NaN = true;
  static constexpr int digits = Mantissa + 1;
  static T from_bits(uint16_t b) { T t; __builtin_memcpy(&t, &b, 2); return t; }
  static T max() { return from_bits(uint16_t(((1u << Exponent) - 2) << Mantissa | ((1u << Mantissa) - 1))); }
  static T min() { return from_bits(uint16_t(1u << Mantissa)); }
  static T lowest() { return -max(); }
  static T epsilon() { return from_bits(uint16_t(((1u << (Exponent - 1)) - 1 - Mantissa) << Mantissa)); }
  static T infinity() { return from_bits(uint16_t(((1u << Exponent) - 1) << Mantissa)); }
  static T quiet_NaN() { return from_bits(uint16_t(((1u << Exponent) - 1) << Mantissa | 1u << (Mantissa - 1))); }
  static T denorm_min() { return from_bits(1); }
};
template <> struct numeric_limits<half> : msl_narrow_float_limits<half, 10, 5> {};
template <> struct numeric_limits<bfloat> : msl_narrow_float_limits<bfloat, 7, 8> {};

}  // namespace metal
