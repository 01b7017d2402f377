// metal_stdlib math for scalars and vectors. Transcendental float functions return the float nearest the exact
// value: the C library's double function, rounded once to float. The C library's float functions are not correctly
// rounded and pick FMA or non-FMA code by the host CPU (glibc's ifuncs), so they could differ between machines;
// the double ones are within 1 double ulp, which rounds to the same float except where the exact value lies within
// 2^-29 float ulps of a rounding boundary. Exact operations (sqrt, floor, fmin, ...) are IEEE's, in float.
// half and bfloat compute in float and round the result back. fast:: and precise:: are the same functions here:
// the emulator cannot reproduce the larger errors of Apple's fast-math implementations.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>

#include "vector.hpp"

namespace metal {

// f applied to a scalar of type T (half/bfloat through float, conversions the kernel did not ask for: quiet in
// profile builds) or component-wise to a vector
#define MSL_NARROW_AND_VECTOR_1(NAME)                                                                    \
  inline half NAME(half x) { MSL_QUIET; return half(NAME(float(x))); }                                   \
  inline bfloat NAME(bfloat x) { MSL_QUIET; return bfloat(NAME(float(x))); }                             \
  template <msl_vector_like V> requires msl_floating<msl_element_t<V>> auto NAME(const V& x) {                       \
    return msl_map<msl_element_t<V>>(x, [](auto e) { return NAME(e); });                                         \
  }
#define MSL_NARROW_AND_VECTOR_2(NAME)                                                                    \
  inline half NAME(half x, half y) { MSL_QUIET; return half(NAME(float(x), float(y))); }                 \
  inline bfloat NAME(bfloat x, bfloat y) { MSL_QUIET; return bfloat(NAME(float(x), float(y))); }         \
  template <class A, class B> requires((msl_vector_like<A> || msl_vector_like<B>) && msl_floating<msl_common_element_t<A, B>>) \
  auto NAME(const A& a, const B& b) {                                                                    \
    return msl_zip<msl_common_element_t<A, B>>(a, b, [](auto x, auto y) { return NAME(x, y); });                 \
  }

// ---- exact functions: the C++ library's float ones ---------------------------------------------------------
#define MSL_STD_1(NAME) using std::NAME; MSL_NARROW_AND_VECTOR_1(NAME)
#define MSL_STD_2(NAME) using std::NAME; MSL_NARROW_AND_VECTOR_2(NAME)
MSL_STD_1(sqrt) MSL_STD_1(floor) MSL_STD_1(ceil) MSL_STD_1(round) MSL_STD_1(rint) MSL_STD_1(trunc) MSL_STD_1(fabs)
MSL_STD_2(fmod) MSL_STD_2(copysign) MSL_STD_2(fmin) MSL_STD_2(fmax) MSL_STD_2(fdim)
#undef MSL_STD_1
#undef MSL_STD_2

// ---- transcendental functions: the double function rounded once to float (see the top of this file) -----------
// The double result is a named variable: in the emulator's fast-math mode g++ would narrow float(exp2(double(x))),
// one expression, to the C library's exp2f.
// Profile builds count each call (per component) as one transcendental.
#define MSL_ROUNDED_1(NAME, DOUBLE_FN) \
  inline float NAME(float x) { MSL_COUNT_BY_SHIM(transcendentals, 1); const double exact = DOUBLE_FN(double(x)); return float(exact); } \
  MSL_NARROW_AND_VECTOR_1(NAME)
#define MSL_ROUNDED_2(NAME, DOUBLE_FN) \
  inline float NAME(float x, float y) { MSL_COUNT_BY_SHIM(transcendentals, 1); const double exact = DOUBLE_FN(double(x), double(y)); return float(exact); } \
  MSL_NARROW_AND_VECTOR_2(NAME)
MSL_ROUNDED_1(exp, std::exp) MSL_ROUNDED_1(exp2, std::exp2) MSL_ROUNDED_1(log, std::log) MSL_ROUNDED_1(log2, std::log2)
MSL_ROUNDED_1(log10, std::log10) MSL_ROUNDED_1(sin, std::sin) MSL_ROUNDED_1(cos, std::cos) MSL_ROUNDED_1(tan, std::tan)
MSL_ROUNDED_1(asin, std::asin) MSL_ROUNDED_1(acos, std::acos) MSL_ROUNDED_1(atan, std::atan)
MSL_ROUNDED_1(sinh, std::sinh) MSL_ROUNDED_1(cosh, std::cosh) MSL_ROUNDED_1(tanh, std::tanh)
MSL_ROUNDED_1(asinh, std::asinh) MSL_ROUNDED_1(acosh, std::acosh) MSL_ROUNDED_1(atanh, std::atanh)
MSL_ROUNDED_1(cbrt, std::cbrt) MSL_ROUNDED_1(erf, std::erf)
MSL_ROUNDED_1(exp10, [](double x) { return std::pow(10.0, x); })
MSL_ROUNDED_2(pow, std::pow) MSL_ROUNDED_2(atan2, std::atan2)
MSL_ROUNDED_2(powr, std::pow)  // defined for x >= 0 only
#undef MSL_ROUNDED_1
#undef MSL_ROUNDED_2

// ---- float functions MSL adds ---------------------------------------------------------------------------
inline float rsqrt(float x) { MSL_COUNT_BY_SHIM(transcendentals, 1); return 1.0f / std::sqrt(x); }  // a reciprocal
inline float fract(float x) { return std::fmin(x - std::floor(x), 0x1.fffffep-1f); }
inline float saturate(float x) { return std::fmin(std::fmax(x, 0.0f), 1.0f); }
inline float sign(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : std::isnan(x) ? 0.0f : x; }
inline float step(float edge, float x) { return x < edge ? 0.0f : 1.0f; }
inline float divide(float x, float y) {
  MSL_COUNT_BY_SHIM(transcendentals, 1);
  MSL_COUNT_BY_SHIM(divisions, 1);
  return x / y;
}
MSL_NARROW_AND_VECTOR_1(rsqrt) MSL_NARROW_AND_VECTOR_1(fract)
MSL_NARROW_AND_VECTOR_1(saturate) MSL_NARROW_AND_VECTOR_1(sign)
MSL_NARROW_AND_VECTOR_2(step) MSL_NARROW_AND_VECTOR_2(divide)
#undef MSL_NARROW_AND_VECTOR_1
#undef MSL_NARROW_AND_VECTOR_2

using std::abs;
inline half abs(half x) { MSL_QUIET; return half(std::fabs(float(x))); }
inline bfloat abs(bfloat x) { return bfloat::from_bits(uint16_t(x.bits & 0x7fff)); }
template <msl_vector_like V> auto abs(const V& x) { return msl_map<msl_element_t<V>>(x, [](auto e) { return abs(e); }); }

using std::fma;
inline half fma(half a, half b, half c) { MSL_QUIET; return half(std::fma(float(a), float(b), float(c))); }  // exact in float, one rounding
inline bfloat fma(bfloat a, bfloat b, bfloat c) { MSL_QUIET; return bfloat(std::fma(float(a), float(b), float(c))); }
template <class A, class B, class C> requires(msl_vector_like<A> || msl_vector_like<B> || msl_vector_like<C>)
auto fma(const A& a, const B& b, const C& c) {
  using V = std::conditional_t<msl_vector_like<A>, A, std::conditional_t<msl_vector_like<B>, B, C>>;
  vec<msl_element_t<V>, msl_components<V>> r;
  for (int i = 0; i < msl_components<V>; i++) r[i] = fma(msl_element_t<V>(msl_component(a, i)), msl_element_t<V>(msl_component(b, i)), msl_element_t<V>(msl_component(c, i)));
  return r;
}

// ---- classification -------------------------------------------------------------------------------------
// Fast math lets a compiler assume that no value is infinite or NaN (clang calls naming one undefined behaviour,
// -Wnan-infinity-disabled) and fold what tests for them: g++ -ffast-math makes isnan false. So the emulator's
// fast-math mode rejects isnan, isinf, isfinite and the constants INFINITY, NAN and HUGE_VAL* at compile time.
#ifdef __FAST_MATH__
template <class> inline constexpr bool msl_infinities_defined = false;
#else
template <class> inline constexpr bool msl_infinities_defined = true;
#endif
#define MSL_NEEDS_INFINITIES(T)                                                                              \
  static_assert(::metal::msl_infinities_defined<T>,                                                          \
                "isnan, isinf, isfinite, INFINITY, NAN or HUGE_VAL under fast math, where the compiler may "   \
                "assume no value is infinite or NaN: compare with finite values, and write an infinity that is " \
                "data from its bits (as_type)")
template <msl_floating T> bool isnan(T x) { MSL_NEEDS_INFINITIES(T); MSL_QUIET; return std::isnan(float(x)); }
template <msl_floating T> bool isinf(T x) { MSL_NEEDS_INFINITIES(T); MSL_QUIET; return std::isinf(float(x)); }
template <msl_floating T> bool isfinite(T x) { MSL_NEEDS_INFINITIES(T); MSL_QUIET; return std::isfinite(float(x)); }
template <msl_floating T> bool signbit(T x) { MSL_QUIET; return std::signbit(float(x)); }
template <msl_vector_like V> auto isnan(const V& x) { return msl_map<bool>(x, [](auto e) { return isnan(e); }); }
template <msl_vector_like V> auto isinf(const V& x) { return msl_map<bool>(x, [](auto e) { return isinf(e); }); }
template <msl_vector_like V> auto isfinite(const V& x) { return msl_map<bool>(x, [](auto e) { return isfinite(e); }); }
template <msl_vector_like V> auto signbit(const V& x) { return msl_map<bool>(x, [](auto e) { return signbit(e); }); }

// ---- min / max / clamp / mix / select (MSL overloads take one type; no mixed scalar types) ----------------
template <msl_scalar T> T max(T a, T b) {
  MSL_QUIET;
  if constexpr (msl_floating<T>) return T(std::fmax(float(a), float(b)));  // a NaN operand yields the other
  else return a > b ? a : b;
}
template <msl_scalar T> T min(T a, T b) {
  MSL_QUIET;
  if constexpr (msl_floating<T>) return T(std::fmin(float(a), float(b)));
  else return a < b ? a : b;
}
template <msl_scalar T> T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <msl_scalar T> T max3(T a, T b, T c) { return max(max(a, b), c); }
template <msl_scalar T> T min3(T a, T b, T c) { return min(min(a, b), c); }
template <msl_scalar T> T median3(T a, T b, T c) { return max(min(a, b), min(max(a, b), c)); }
template <msl_floating T> T mix(T x, T y, T a) { return T(x + (y - x) * a); }
template <msl_floating T> T smoothstep(T e0, T e1, T x) {
  float t = saturate((float(x) - float(e0)) / (float(e1) - float(e0)));
  return T(t * t * (3.0f - 2.0f * t));
}
template <msl_scalar T> T select(T a, T b, bool c) { return c ? b : a; }

template <class A, class... Rest> auto msl_first_vector_element() {
  if constexpr (msl_vector_like<A>) return std::type_identity<msl_element_t<A>>{};
  else return msl_first_vector_element<Rest...>();
}
// component-wise version of a scalar function of several arguments; scalar arguments are broadcast
template <class F, class... A> auto msl_componentwise(F f, const A&... args) {
  constexpr int n = std::max({msl_components<A>...});
  using E = typename decltype(msl_first_vector_element<A...>())::type;
  vec<E, n> r;
  for (int i = 0; i < n; i++) r[i] = f(E(msl_component(args, i))...);
  return r;
}
template <class A, class B> requires(msl_vector_like<A> || msl_vector_like<B>) auto max(const A& a, const B& b) {
  return msl_componentwise([](auto x, auto y) { return max(x, y); }, a, b);
}
template <class A, class B> requires(msl_vector_like<A> || msl_vector_like<B>) auto min(const A& a, const B& b) {
  return msl_componentwise([](auto x, auto y) { return min(x, y); }, a, b);
}
template <msl_vector_like V, class L, class H> auto clamp(const V& x, const L& lo, const H& hi) {
  return msl_componentwise([](auto v, auto l, auto h) { return clamp(v, l, h); }, x, lo, hi);
}
template <msl_vector_like V, class W, class A> auto mix(const V& x, const W& y, const A& a) {
  return msl_componentwise([](auto p, auto q, auto t) { return mix(p, q, t); }, x, y, a);
}
template <msl_vector_like V, class W, class X> auto smoothstep(const V& e0, const W& e1, const X& x) {
  return msl_componentwise([](auto p, auto q, auto t) { return smoothstep(p, q, t); }, e0, e1, x);
}
template <msl_vector_like V, class W, class C> requires(msl_vector_like<C> || std::is_same_v<C, bool>)
auto select(const V& a, const W& b, const C& c) {
  vec<msl_element_t<V>, msl_components<V>> r;
  for (int i = 0; i < msl_components<V>; i++) r[i] = msl_component(c, i) ? msl_element_t<V>(msl_component(b, i)) : msl_element_t<V>(a[i]);
  return r;
}

// ---- geometric ----------------------------------------------------------------------------------------------
template <class A, class B> requires(msl_vector_like<A> && msl_vector_like<B>) auto dot(const A& a, const B& b) {
  using E = msl_element_t<A>;
  msl_compute_t<E> s = 0;
  for (int i = 0; i < msl_components<A>; i++) s = fma(msl_compute_t<E>(a[i]), msl_compute_t<E>(b[i]), s);
  return E(s);
}
template <msl_vector_like V> auto length_squared(const V& a) { return dot(a, a); }
template <msl_vector_like V> auto length(const V& a) { return msl_element_t<V>(std::sqrt(float(dot(a, a)))); }
template <class A, class B> requires(msl_vector_like<A> && msl_vector_like<B>) auto distance(const A& a, const B& b) { return length(msl_as_vec(a) - msl_as_vec(b)); }
template <msl_vector_like V> auto normalize(const V& a) { return msl_as_vec(a) * rsqrt(dot(a, a)); }
template <class A, class B> requires(msl_components<A> == 3 && msl_components<B> == 3) auto cross(const A& a, const B& b) {
  return vec<msl_element_t<A>, 3>(a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]);
}

// ---- integer functions -----------------------------------------------------------------------------------------
template <class T> concept msl_integer = std::is_integral_v<T> && !std::is_same_v<T, bool>;
template <msl_integer T> T clz(T x) {
  using U = std::make_unsigned_t<T>;
  return T(x == 0 ? int(sizeof(T) * 8) : std::countl_zero(U(x)));
}
template <msl_integer T> T ctz(T x) {
  using U = std::make_unsigned_t<T>;
  return T(x == 0 ? int(sizeof(T) * 8) : std::countr_zero(U(x)));
}
template <msl_integer T> T popcount(T x) { return T(std::popcount(std::make_unsigned_t<T>(x))); }
template <msl_integer T> T reverse_bits(T x) {
  using U = std::make_unsigned_t<T>;
  U u = U(x), r = 0;
  for (size_t i = 0; i < sizeof(T) * 8; i++) r = U((r << 1) | ((u >> i) & 1));
  return T(r);
}
template <msl_integer T> T mulhi(T a, T b) {
  if constexpr (sizeof(T) == 8) return T((std::conditional_t<std::is_signed_v<T>, __int128, unsigned __int128>(a) * b) >> 64);
  else return T((std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>(a) * b) >> (sizeof(T) * 8));
}
template <msl_integer T> std::make_unsigned_t<T> absdiff(T a, T b) { return std::make_unsigned_t<T>(a > b ? a - b : b - a); }
template <msl_integer T> T addsat(T a, T b) {
  T r;
  if (!__builtin_add_overflow(a, b, &r)) return r;
  return b > 0 ? std::numeric_limits<T>::max() : std::numeric_limits<T>::min();
}
template <msl_integer T> T subsat(T a, T b) {
  T r;
  if (!__builtin_sub_overflow(a, b, &r)) return r;
  return b < 0 ? std::numeric_limits<T>::max() : std::numeric_limits<T>::min();
}
template <msl_integer T> T hadd(T a, T b) { return T((__int128(a) + __int128(b)) >> 1); }
template <msl_integer T> T rhadd(T a, T b) { return T((__int128(a) + __int128(b) + 1) >> 1); }
template <msl_integer T> T rotate(T v, T n) {
  using U = std::make_unsigned_t<T>;
  return T(std::rotl(U(v), int(n % T(sizeof(T) * 8))));
}
template <msl_integer T> T extract_bits(T x, uint offset, uint bits) {
  if (bits == 0) return 0;
  using U = std::make_unsigned_t<T>;
  constexpr uint width = sizeof(T) * 8;
  if constexpr (std::is_signed_v<T>) return T(T(U(x) << (width - offset - bits)) >> (width - bits));  // sign-extended
  else return T((U(x) >> offset) & (bits == width ? U(~U(0)) : U((U(1) << bits) - 1)));
}
template <msl_integer T> T insert_bits(T base, T insert, uint offset, uint bits) {
  using U = std::make_unsigned_t<T>;
  constexpr uint width = sizeof(T) * 8;
  U mask = bits == width ? U(~U(0)) : U(((U(1) << bits) - 1) << offset);
  return T((U(base) & ~mask) | ((U(insert) << offset) & mask));
}
#define MSL_INTEGER_VECTOR(NAME)                                                                   \
  template <class A, class... B> requires(msl_vector_like<A> && msl_integer<msl_element_t<A>>)                 \
  auto NAME(const A& a, const B&... b) {                                                           \
    return msl_componentwise([](auto x, auto... y) { return NAME(x, y...); }, a, b...);                \
  }
MSL_INTEGER_VECTOR(clz) MSL_INTEGER_VECTOR(ctz) MSL_INTEGER_VECTOR(popcount) MSL_INTEGER_VECTOR(reverse_bits)
MSL_INTEGER_VECTOR(mulhi) MSL_INTEGER_VECTOR(addsat) MSL_INTEGER_VECTOR(subsat) MSL_INTEGER_VECTOR(hadd)
MSL_INTEGER_VECTOR(rhadd) MSL_INTEGER_VECTOR(rotate)
#undef MSL_INTEGER_VECTOR

// ---- precise:: and fast:: ------------------------------------------------------------------------------------
#define MSL_MATH_NAMES                                                                                          \
  using metal::exp; using metal::exp2; using metal::exp10; using metal::log; using metal::log2; using metal::log10; \
  using metal::sqrt; using metal::rsqrt; using metal::pow; using metal::powr; using metal::sin; using metal::cos;  \
  using metal::tan; using metal::tanh; using metal::sinh; using metal::cosh; using metal::asin; using metal::acos; \
  using metal::atan; using metal::atan2; using metal::divide; using metal::fmin; using metal::fmax;              \
  using metal::max; using metal::min; using metal::clamp; using metal::fract; using metal::floor;               \
  using metal::ceil; using metal::round; using metal::trunc; using metal::abs; using metal::fabs;               \
  using metal::fma; using metal::normalize; using metal::length; using metal::distance; using metal::saturate;
namespace precise { MSL_MATH_NAMES }
namespace fast { MSL_MATH_NAMES }
#undef MSL_MATH_NAMES
}  // namespace metal

// ---- constants ---------------------------------------------------------------------------------------------------
// MAXFLOAT, HUGE_VALF, INFINITY and NAN come from <cmath>; under fast math those but MAXFLOAT are rejected (above)
#ifdef __FAST_MATH__
template <class T> T msl_fast_math_special() { MSL_NEEDS_INFINITIES(T); return T(); }
#undef HUGE_VALF
#undef INFINITY
#undef NAN
#define HUGE_VALF (msl_fast_math_special<float>())
#define INFINITY (msl_fast_math_special<float>())
#define NAN (msl_fast_math_special<float>())
#define HUGE_VALH (msl_fast_math_special<half>())
#else
#define HUGE_VALH half(__builtin_huge_valf())
#endif
#define MAXHALF half(65504.0f)
#define FLT_MAX 0x1.fffffep+127f
#define FLT_MIN 0x1p-126f
#define FLT_EPSILON 0x1p-23f
#define HALF_MAX half(65504.0f)
#define HALF_MIN half(0x1p-14f)
#define HALF_EPSILON half(0x1p-10f)
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.44269504088896340736f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.693147180559945309417f
#define M_LN10_F 2.30258509299404568402f
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_PI_4_F 0.785398163397448309616f
#define M_1_PI_F 0.318309886183790671538f
#define M_2_PI_F 0.636619772367581343076f
#define M_2_SQRTPI_F 1.12837916709551257390f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f
#define M_LOG2E_H half(M_LOG2E_F)
#define M_LN2_H half(M_LN2_F)
#define M_PI_H half(M_PI_F)
