// Lint-only prelude: just enough of the Metal Shading Language for libclang to *parse and type
// check* MSL as C++. Nothing here has to compute anything: declarations only.
//
// The point is the address spaces. MSL's `device`, `constant` and `threadgroup` become clang
// address spaces, so clang itself rejects a threadgroup pointer passed where a device one is
// expected, a device pointer stored in a thread pointer, etc. `constant` also carries `const`
// because MSL's constant address space is read-only. `thread` is the default address space.
#pragma once

#define device __attribute__((address_space(1)))
#define constant const __attribute__((address_space(2)))
#define threadgroup __attribute__((address_space(3)))
#define thread
// Other MSL address spaces / function qualifiers that do not matter for compute kernels.
#define threadgroup_imageblock
#define ray_data
#define object_data
#define kernel
#define vertex
#define fragment
#define visible
// What the lint turns `threadgroup T x[N];` inside a function into: static (clang allows address
// spaces only there) and not constructed, like real threadgroup memory.
#define __lint_tg_storage static __attribute__((loader_uninitialized))
// Function constants are always "defined" for the lint.
#define is_function_constant_defined(x) true

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef _Float16 half;
typedef __bf16 bfloat;
typedef unsigned long size_t;
typedef long ptrdiff_t;
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long int64_t;
typedef unsigned long uint64_t;
typedef unsigned long uintptr_t;
typedef long intptr_t;

// MSL's `h` suffix (1.0h) as a user-defined literal.
constexpr half operator""h(long double v) { return (half)v; }
constexpr half operator""h(unsigned long long v) { return (half)v; }

namespace __lint {
template <class T> struct decay { typedef T type; };
template <class T> struct decay<T&> { typedef T type; };
template <class T> struct identity { typedef T type; };
// Untyped constructor for vector types: MSL allows any composition of scalars and vectors.
template <class V, class... A> V make(A...);
// Column-major matrix type (floatCxR); only what kernels typically touch.
template <class T, int C, int R> struct mat {
  typedef T col __attribute__((ext_vector_type(R)));
  col columns[C];
  mat();
  template <class... A> explicit mat(A...);
  col& operator[](int);
  const col& operator[](int) const;
};
template <class T, int C, int R> mat<T, C, R> operator*(mat<T, C, R>, T);
template <class T, int C, int R> mat<T, C, R> operator+(mat<T, C, R>, mat<T, C, R>);
template <class T, int C, int R, class V> V operator*(mat<T, C, R>, V);
template <class T> struct elem { typedef T type; };
template <class T, int N> struct elem<T __attribute__((ext_vector_type(N)))> { typedef T type; };
// MSL's boolN: clang's bool ext-vectors have no .x components and comparisons of clang vectors
// give int vectors, so boolN is a small struct constructible from any comparison result.
template <int N> struct bvec {
  bool x, y, z, w;
  bvec() = default;
  template <class V> bvec(V);
  bool& operator[](int);
  bool operator[](int) const;
  bvec operator!() const;
  bvec operator&&(bvec) const;
  bvec operator||(bvec) const;
  bvec operator==(bvec) const;
  bvec operator!=(bvec) const;
};
}  // namespace __lint

typedef __lint::bvec<2> bool2;
typedef __lint::bvec<3> bool3;
typedef __lint::bvec<4> bool4;
typedef __lint::bvec<2> packed_bool2;
typedef __lint::bvec<3> packed_bool3;
typedef __lint::bvec<4> packed_bool4;
#include "msl_lint_vectors.inc"

template <class T, int N> using vec = T __attribute__((ext_vector_type(N)));

namespace metal {
#include "msl_lint_metal_names.inc"
using ::vec;

// ---- limits and constants
template <class T> struct numeric_limits {
  static constexpr T min() { return T(0); }
  static constexpr T max() { return T(0); }
  static constexpr T lowest() { return T(0); }
  static constexpr T infinity() { return T(0); }
  static constexpr T quiet_NaN() { return T(0); }
  static constexpr T epsilon() { return T(0); }
  static constexpr bool is_signed = true;
  static constexpr bool is_integer = false;
  static constexpr int digits = 0;
};

// ---- metal::array and small type traits used in templated kernels
template <class T, size_t N> struct array {
  T elems[N];
  T& operator[](size_t);
  const T& operator[](size_t) const;
  static constexpr size_t size() { return N; }
};
template <bool B, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { typedef T type; };
template <bool B, class T = void> using enable_if_t = typename enable_if<B, T>::type;
template <class A, class B> struct is_same { static constexpr bool value = false; };
template <class A> struct is_same<A, A> { static constexpr bool value = true; };
template <class A, class B> constexpr bool is_same_v = is_same<A, B>::value;
template <bool B, class T, class F> struct conditional { typedef T type; };
template <class T, class F> struct conditional<false, T, F> { typedef F type; };
template <bool B, class T, class F> using conditional_t = typename conditional<B, T, F>::type;
template <class T> struct is_floating_point { static constexpr bool value = false; };
template <> struct is_floating_point<float> { static constexpr bool value = true; };
template <> struct is_floating_point<half> { static constexpr bool value = true; };
template <> struct is_floating_point<bfloat> { static constexpr bool value = true; };
template <class T> constexpr bool is_floating_point_v = is_floating_point<T>::value;
template <class T> struct remove_cv { typedef T type; };
template <class T> struct remove_cv<const T> { typedef T type; };
template <class T> using remove_cv_t = typename remove_cv<T>::type;
template <class T> struct make_scalar { typedef typename __lint::elem<T>::type type; };

// ---- reinterpretation
template <class T, class U> T as_type(U);

// ---- math: every function takes anything and returns (a decayed copy of) its first argument's
// type, except the few whose result type differs (dot, length, predicates).
#define __LINT_GENERIC(name) \
  template <class T, class... U> T name(T, U...);
__LINT_GENERIC(abs) __LINT_GENERIC(fabs) __LINT_GENERIC(ceil) __LINT_GENERIC(floor)
__LINT_GENERIC(round) __LINT_GENERIC(rint) __LINT_GENERIC(trunc) __LINT_GENERIC(fract)
__LINT_GENERIC(exp) __LINT_GENERIC(exp2) __LINT_GENERIC(exp10) __LINT_GENERIC(log)
__LINT_GENERIC(log2) __LINT_GENERIC(log10) __LINT_GENERIC(sqrt) __LINT_GENERIC(rsqrt)
__LINT_GENERIC(sin) __LINT_GENERIC(cos) __LINT_GENERIC(tan) __LINT_GENERIC(asin)
__LINT_GENERIC(acos) __LINT_GENERIC(atan) __LINT_GENERIC(atan2) __LINT_GENERIC(sinh)
__LINT_GENERIC(cosh) __LINT_GENERIC(tanh) __LINT_GENERIC(asinh) __LINT_GENERIC(acosh)
__LINT_GENERIC(atanh) __LINT_GENERIC(sincos) __LINT_GENERIC(sinpi) __LINT_GENERIC(cospi)
__LINT_GENERIC(pow) __LINT_GENERIC(powr) __LINT_GENERIC(fmax) __LINT_GENERIC(fmin)
__LINT_GENERIC(max) __LINT_GENERIC(min) __LINT_GENERIC(max3) __LINT_GENERIC(min3)
__LINT_GENERIC(median3) __LINT_GENERIC(clamp) __LINT_GENERIC(fma) __LINT_GENERIC(mad)
__LINT_GENERIC(mix) __LINT_GENERIC(step) __LINT_GENERIC(smoothstep) __LINT_GENERIC(sign)
__LINT_GENERIC(copysign) __LINT_GENERIC(fmod) __LINT_GENERIC(saturate) __LINT_GENERIC(select)
__LINT_GENERIC(fdim) __LINT_GENERIC(ldexp) __LINT_GENERIC(frexp) __LINT_GENERIC(modf)
__LINT_GENERIC(nextafter) __LINT_GENERIC(absdiff) __LINT_GENERIC(popcount)
__LINT_GENERIC(clz) __LINT_GENERIC(ctz) __LINT_GENERIC(rotate) __LINT_GENERIC(extract_bits)
__LINT_GENERIC(insert_bits) __LINT_GENERIC(reverse_bits) __LINT_GENERIC(mulhi)
__LINT_GENERIC(mul24) __LINT_GENERIC(mad24) __LINT_GENERIC(addsat) __LINT_GENERIC(subsat)
__LINT_GENERIC(hadd) __LINT_GENERIC(rhadd) __LINT_GENERIC(madhi) __LINT_GENERIC(madsat)
__LINT_GENERIC(normalize) __LINT_GENERIC(cross) __LINT_GENERIC(divide) __LINT_GENERIC(recip)
__LINT_GENERIC(erf) __LINT_GENERIC(erfc) __LINT_GENERIC(expm1) __LINT_GENERIC(log1p)
__LINT_GENERIC(cbrt) __LINT_GENERIC(hypot) __LINT_GENERIC(remainder)
#undef __LINT_GENERIC
template <class T> typename __lint::elem<T>::type dot(T, T);
template <class T> typename __lint::elem<T>::type length(T);
template <class T> typename __lint::elem<T>::type length_squared(T);
template <class T> typename __lint::elem<T>::type distance(T, T);
template <class T> typename __lint::elem<T>::type distance_squared(T, T);
template <class T> typename __lint::elem<T>::type reduce_add(T);
template <class T> auto isnan(T x) -> decltype(x != x);
template <class T> auto isinf(T x) -> decltype(x != x);
template <class T> auto isfinite(T x) -> decltype(x != x);
template <class T> auto isnormal(T x) -> decltype(x != x);
template <class T> auto signbit(T x) -> decltype(x != x);
template <class T> bool all(T);
template <class T> bool any(T);
namespace precise { using namespace ::metal; }
namespace fast { using namespace ::metal; }

// ---- barriers
enum mem_flags : uint { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4,
                        mem_threadgroup_imageblock = 8, mem_object_data = 16 };
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint(a) | uint(b)); }
void threadgroup_barrier(mem_flags);
void simdgroup_barrier(mem_flags);

// ---- SIMD-group and quad functions
struct simd_vote {
  typedef ulong vote_t;
  explicit constexpr simd_vote(vote_t v = 0) : v(v) {}
  explicit constexpr operator vote_t() const { return v; }
  bool all() const;
  bool any() const;
  vote_t v;
};
struct quad_vote {
  typedef ushort vote_t;
  explicit constexpr quad_vote(vote_t v = 0) : v(v) {}
  explicit constexpr operator vote_t() const { return v; }
  bool all() const;
  bool any() const;
  vote_t v;
};
#define __LINT_SIMD(p)                                                          \
  template <class T> T p##_shuffle(T, ushort);                                  \
  template <class T> T p##_shuffle_xor(T, ushort);                              \
  template <class T> T p##_shuffle_up(T, ushort);                               \
  template <class T> T p##_shuffle_down(T, ushort);                             \
  template <class T> T p##_shuffle_rotate_up(T, ushort);                        \
  template <class T> T p##_shuffle_rotate_down(T, ushort);                      \
  template <class T> T p##_shuffle_and_fill_up(T, T, ushort);                   \
  template <class T> T p##_shuffle_and_fill_up(T, T, ushort, ushort);           \
  template <class T> T p##_shuffle_and_fill_down(T, T, ushort);                 \
  template <class T> T p##_shuffle_and_fill_down(T, T, ushort, ushort);         \
  template <class T> T p##_broadcast(T, ushort);                                \
  template <class T> T p##_broadcast_first(T);                                  \
  template <class T> T p##_sum(T);                                              \
  template <class T> T p##_product(T);                                          \
  template <class T> T p##_min(T);                                              \
  template <class T> T p##_max(T);                                              \
  template <class T> T p##_and(T);                                              \
  template <class T> T p##_or(T);                                               \
  template <class T> T p##_xor(T);                                              \
  template <class T> T p##_prefix_inclusive_sum(T);                             \
  template <class T> T p##_prefix_exclusive_sum(T);                             \
  template <class T> T p##_prefix_inclusive_product(T);                         \
  template <class T> T p##_prefix_exclusive_product(T);                         \
  bool p##_all(bool);                                                           \
  bool p##_any(bool);                                                           \
  bool p##_is_first();                                                          \
  bool p##_is_helper_thread();
__LINT_SIMD(simd)
__LINT_SIMD(quad)
#undef __LINT_SIMD
simd_vote simd_ballot(bool);
simd_vote simd_active_threads_mask();
quad_vote quad_ballot(bool);
quad_vote quad_active_threads_mask();

// ---- simdgroup_matrix: loads/stores exist for device and threadgroup memory only.
template <class T, int R, int C> struct simdgroup_matrix {
  simdgroup_matrix();
  simdgroup_matrix(T);
  vec<T, 2>& thread_elements();
  const vec<T, 2>& thread_elements() const;
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <class T, int R, int C> simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T);
template <class T, int R, int C, class E>
void simdgroup_load(thread simdgroup_matrix<T, R, C>&, const device E*, ulong = C,
                    ulong2 = ulong2(0, 0), bool = false);
template <class T, int R, int C, class E>
void simdgroup_load(thread simdgroup_matrix<T, R, C>&, const threadgroup E*, ulong = C,
                    ulong2 = ulong2(0, 0), bool = false);
template <class T, int R, int C, class E>
void simdgroup_store(const thread simdgroup_matrix<T, R, C>&, device E*, ulong = C,
                     ulong2 = ulong2(0, 0), bool = false);
template <class T, int R, int C, class E>
void simdgroup_store(const thread simdgroup_matrix<T, R, C>&, threadgroup E*, ulong = C,
                     ulong2 = ulong2(0, 0), bool = false);
template <class D, class A, class B, class C>
void simdgroup_multiply_accumulate(thread D&, const thread A&, const thread B&, const thread C&);
template <class D, class A, class B>
void simdgroup_multiply(thread D&, const thread A&, const thread B&);
template <class... T> void simdgroup_async_copy(T...);

// ---- atomics (relaxed): only on device and threadgroup atomic objects, never constant.
enum memory_order { memory_order_relaxed, memory_order_acquire, memory_order_release,
                    memory_order_acq_rel, memory_order_seq_cst };
template <class T> struct _atomic { T __v; };
template <class T> using atomic = _atomic<T>;
typedef _atomic<int> atomic_int;
typedef _atomic<uint> atomic_uint;
typedef _atomic<float> atomic_float;
typedef _atomic<bool> atomic_bool;
typedef _atomic<ulong> atomic_ulong;
#define __LINT_ATOMIC_AS(AS)                                                                       \
  template <class T> T atomic_load_explicit(const volatile AS _atomic<T>*, memory_order);         \
  template <class T>                                                                               \
  void atomic_store_explicit(volatile AS _atomic<T>*, typename __lint::identity<T>::type,          \
                             memory_order);                                                        \
  template <class T>                                                                               \
  T atomic_exchange_explicit(volatile AS _atomic<T>*, typename __lint::identity<T>::type,          \
                             memory_order);                                                        \
  template <class T>                                                                               \
  bool atomic_compare_exchange_weak_explicit(volatile AS _atomic<T>*, thread T*,                   \
                                             typename __lint::identity<T>::type, memory_order,     \
                                             memory_order);                                        \
  __LINT_ATOMIC_RMW(AS, add) __LINT_ATOMIC_RMW(AS, sub) __LINT_ATOMIC_RMW(AS, and)                 \
  __LINT_ATOMIC_RMW(AS, or) __LINT_ATOMIC_RMW(AS, xor) __LINT_ATOMIC_RMW(AS, min)                  \
  __LINT_ATOMIC_RMW(AS, max)
#define __LINT_ATOMIC_RMW(AS, op)                                                                  \
  template <class T>                                                                               \
  T atomic_fetch_##op##_explicit(volatile AS _atomic<T>*, typename __lint::identity<T>::type,      \
                                 memory_order);
__LINT_ATOMIC_AS(device)
__LINT_ATOMIC_AS(threadgroup)
#undef __LINT_ATOMIC_AS
#undef __LINT_ATOMIC_RMW
}  // namespace metal

// Common MSL macros/constants.
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define MAXFLOAT 3.40282347e+38F
#define FLT_MAX 3.40282347e+38F
#define FLT_MIN 1.17549435e-38F
#define FLT_EPSILON 1.1920929e-7F
#define HALF_MAX 65504.0h
#define HALF_MIN 6.10351562e-5h
#define HUGE_VALF __builtin_inff()
#define M_E_F 2.71828183f
#define M_LOG2E_F 1.44269504f
#define M_LOG10E_F 0.434294482f
#define M_LN2_F 0.693147181f
#define M_LN10_F 2.30258509f
#define M_PI_F 3.14159265f
#define M_PI_2_F 1.57079633f
#define M_PI_4_F 0.785398163f
#define M_1_PI_F 0.318309886f
#define M_2_PI_F 0.636619772f
#define M_2_SQRTPI_F 1.12837917f
#define M_SQRT2_F 1.41421356f
#define M_SQRT1_2_F 0.707106781f
#define INT_MAX 2147483647
#define INT_MIN (-2147483647 - 1)
#define UINT_MAX 4294967295U
