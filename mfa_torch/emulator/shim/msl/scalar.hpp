// MSL scalar types. half is IEEE binary16 (_Float16: g++ rounds every operation to half; in profile builds a class
// around it, counted_half.hpp); bfloat is a wrapper whose every operation is computed in float and rounded to
// nearest even. Profile builds count conversions between float and half or bfloat, so bfloat arithmetic counts as
// the conversions it is made of (as on GPUs before Apple9, which compute bfloat in float).
#pragma once
#include <bit>
#include <concepts>
#include <cstdint>
#include <type_traits>

#include "../../runtime/profile_hooks.hpp"

namespace metal {

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;  // MSL long/ulong are 64-bit, as on x86-64 Linux
#if defined(MSL_PROFILE)
struct half;
#else
typedef _Float16 half;
#endif

constexpr uint16_t msl_float_to_bfloat_bits(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1)) >> 16);                 // round to nearest, ties to even
}

struct bfloat;
template <class T> concept msl_arithmetic = std::is_arithmetic_v<T> || std::is_same_v<T, half>;
template <class T> concept msl_scalar = msl_arithmetic<T> || std::is_same_v<T, bfloat>;
template <class T> concept msl_floating = std::is_floating_point_v<T> || std::is_same_v<T, half> || std::is_same_v<T, bfloat>;

struct bfloat {
  uint16_t bits;

  bfloat() = default;
  template <msl_arithmetic T> constexpr bfloat(T v) : bits(msl_float_to_bfloat_bits(float(v))) {
    if constexpr (msl_floating<T>)
      if (!std::is_constant_evaluated()) MSL_COUNT(conversions, 1);
  }
  constexpr operator float() const {
    if (!std::is_constant_evaluated()) MSL_COUNT(conversions, 1);
    return std::bit_cast<float>(uint32_t(bits) << 16);
  }
  // MSL documents no bfloat-to-bool conversion: rejected here (not taken through float) so that kernels compare.
  explicit operator bool() const = delete;
  static constexpr bfloat from_bits(uint16_t b) { bfloat r; r.bits = b; return r; }

  template <msl_arithmetic T> bfloat& operator+=(T o) { return *this = bfloat(float(*this) + float(o)); }
  template <msl_arithmetic T> bfloat& operator-=(T o) { return *this = bfloat(float(*this) - float(o)); }
  template <msl_arithmetic T> bfloat& operator*=(T o) { return *this = bfloat(float(*this) * float(o)); }
  template <msl_arithmetic T> bfloat& operator/=(T o) { return *this = bfloat(float(*this) / float(o)); }
  bfloat& operator+=(bfloat o) { return *this += float(o); }
  bfloat& operator-=(bfloat o) { return *this -= float(o); }
  bfloat& operator*=(bfloat o) { return *this *= float(o); }
  bfloat& operator/=(bfloat o) { return *this /= float(o); }
};

// bfloat op bfloat (or an integer) stays bfloat; with float or half it promotes to float.
template <class T> using msl_bfloat_result = std::conditional_t<std::is_integral_v<T> || std::is_same_v<T, bfloat>, bfloat, float>;
#define MSL_BFLOAT_ARITH(OP)                                                                                   \
  inline bfloat operator OP(bfloat a, bfloat b) { return bfloat(float(a) OP float(b)); }                       \
  template <msl_arithmetic T> msl_bfloat_result<T> operator OP(bfloat a, T b) { return msl_bfloat_result<T>(float(a) OP float(b)); } \
  template <msl_arithmetic T> msl_bfloat_result<T> operator OP(T a, bfloat b) { return msl_bfloat_result<T>(float(a) OP float(b)); }
MSL_BFLOAT_ARITH(+)
MSL_BFLOAT_ARITH(-)
MSL_BFLOAT_ARITH(*)
MSL_BFLOAT_ARITH(/)
#undef MSL_BFLOAT_ARITH
#define MSL_BFLOAT_COMPARE(OP)                                                                   \
  inline bool operator OP(bfloat a, bfloat b) { return float(a) OP float(b); }                   \
  template <msl_arithmetic T> bool operator OP(bfloat a, T b) { return float(a) OP float(b); }       \
  template <msl_arithmetic T> bool operator OP(T a, bfloat b) { return float(a) OP float(b); }
MSL_BFLOAT_COMPARE(==)
MSL_BFLOAT_COMPARE(!=)
MSL_BFLOAT_COMPARE(<)
MSL_BFLOAT_COMPARE(<=)
MSL_BFLOAT_COMPARE(>)
MSL_BFLOAT_COMPARE(>=)
#undef MSL_BFLOAT_COMPARE
inline bfloat operator-(bfloat a) { return bfloat::from_bits(uint16_t(a.bits ^ 0x8000)); }
inline bfloat operator+(bfloat a) { return a; }

}  // namespace metal
#if defined(MSL_PROFILE)
#include "counted_half.hpp"
#endif
namespace metal {

static_assert(sizeof(bfloat) == 2 && alignof(bfloat) == 2);
static_assert(sizeof(half) == 2);

// The type an MSL scalar computes in: bfloat and half math goes through float and rounds back.
template <class T> using msl_compute_t = std::conditional_t<std::is_same_v<T, bfloat> || std::is_same_v<T, half>, float, T>;

}  // namespace metal
