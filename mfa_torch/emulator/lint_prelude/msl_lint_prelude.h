#pragma clang system_header  // its own warnings (the h literal suffix) are not the user's
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
#define kernel __attribute__((annotate("msl:kernel")))  // the strict check finds kernels by it
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
// Element kinds for the math signatures: bfloat has none (the specification gives it no math functions).
enum kind { kNone = 0, kInteger = 1, kFloating = 2, kFloat32 = 4 };
template <class T> struct kind_of { static constexpr int value = kNone; };
#define __LINT_KIND(T, K) template <> struct kind_of<T> { static constexpr int value = K; };
__LINT_KIND(char, kInteger) __LINT_KIND(signed char, kInteger) __LINT_KIND(uchar, kInteger)
__LINT_KIND(short, kInteger) __LINT_KIND(ushort, kInteger) __LINT_KIND(int, kInteger) __LINT_KIND(uint, kInteger)
__LINT_KIND(long, kInteger) __LINT_KIND(ulong, kInteger) __LINT_KIND(half, kFloating)
__LINT_KIND(float, kFloating | kFloat32)
#undef __LINT_KIND
template <class T, bool OK> struct only_if {};
template <class T> struct only_if<T, true> { typedef T type; };
template <class T, int K> struct if_kind : only_if<T, (kind_of<typename elem<T>::type>::value & K) != 0> {};
template <class T, class E> struct with_element { typedef E type; };
template <class T, int N, class E> struct with_element<T __attribute__((ext_vector_type(N))), E> {
  typedef E type __attribute__((ext_vector_type(N)));
};
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

// ---- math, with the MSL specification's signatures: T is a scalar or vector of one element type, every argument
// has that one type (min(float, int) does not resolve, as with Apple's compiler), floating-point functions take
// half or float T, integer functions integer T. The constraint sits in the return type, so that a floating-point and
// an integer overload of one name (abs, clamp) are distinct templates.
#define __LINT_F(n) template <class T> typename __lint::if_kind<T, __lint::kFloating>::type n
#define __LINT_I(n) template <class T> typename __lint::if_kind<T, __lint::kInteger>::type n
#define __LINT_F32(n) template <class T> typename __lint::if_kind<T, __lint::kFloat32>::type n
#define __LINT_F1(n) __LINT_F(n)(T);
#define __LINT_F2(n) __LINT_F(n)(T, T);
#define __LINT_F3(n) __LINT_F(n)(T, T, T);
#define __LINT_I2(n) __LINT_I(n)(T, T);
#define __LINT_I3(n) __LINT_I(n)(T, T, T);
#define __LINT_F32_1(n) __LINT_F32(n)(T);
#define __LINT_F32_2(n) __LINT_F32(n)(T, T);
#define __LINT_F32_3(n) __LINT_F32(n)(T, T, T);
// The math functions (and clamp, saturate) that metal::precise:: and metal::fast:: also have, for float only there.
#define __LINT_PRECISE_OR_FAST(D, F1, F2, F3)                                                                    \
  F1(acos) F1(acosh) F1(asin) F1(asinh) F1(atan) F2(atan2) F1(atanh) F1(ceil) F2(copysign) F1(cos) F1(cosh)      \
  F1(cospi) F2(divide) F1(exp) F1(exp10) F1(exp2) F1(fabs) F1(abs) F2(fdim) F1(floor) F3(fma) F2(fmax) F3(fmax3) \
  F3(fmedian3) F2(fmin) F3(fmin3) F2(fmod) F1(fract) F1(log) F1(log10) F1(log2) F2(pow) F2(powr) F1(rint)        \
  F1(round) F1(rsqrt) F1(sin) F1(sinh) F1(sinpi) F1(sqrt) F1(tan) F1(tanh) F1(tanpi) F1(trunc) F3(clamp)          \
  F1(saturate) F2(max) F2(min) F3(max3) F3(min3) F3(median3)                                                      \
  D(frexp)(T, thread typename __lint::with_element<T, int>::type&);                                               \
  D(ldexp)(T, typename __lint::with_element<T, int>::type);                                                       \
  D(modf)(T, thread T&);                                                                                          \
  D(sincos)(T, thread T&);
__LINT_PRECISE_OR_FAST(__LINT_F, __LINT_F1, __LINT_F2, __LINT_F3)
template <class T> typename __lint::with_element<typename __lint::if_kind<T, __lint::kFloating>::type, int>::type
ilogb(T);
__LINT_F3(mix) __LINT_F1(sign) __LINT_F3(smoothstep) __LINT_F2(step) __LINT_F2(nextafter) __LINT_F1(normalize)
__LINT_F2(cross)
__LINT_I(abs)(T); __LINT_I2(absdiff) __LINT_I2(addsat) __LINT_I2(subsat) __LINT_I2(hadd) __LINT_I2(rhadd)
__LINT_I2(mulhi) __LINT_I2(mul24) __LINT_I3(mad24) __LINT_I3(madhi) __LINT_I3(madsat) __LINT_I2(rotate)
__LINT_I3(clamp) __LINT_I2(max) __LINT_I2(min) __LINT_I3(max3) __LINT_I3(min3) __LINT_I3(median3)
__LINT_I(popcount)(T); __LINT_I(clz)(T); __LINT_I(ctz)(T); __LINT_I(reverse_bits)(T);
__LINT_I(extract_bits)(T, uint, uint); __LINT_I(insert_bits)(T, T, uint, uint);
namespace precise { __LINT_PRECISE_OR_FAST(__LINT_F32, __LINT_F32_1, __LINT_F32_2, __LINT_F32_3) }
namespace fast { __LINT_PRECISE_OR_FAST(__LINT_F32, __LINT_F32_1, __LINT_F32_2, __LINT_F32_3) }
#undef __LINT_PRECISE_OR_FAST
#undef __LINT_F
#undef __LINT_I
#undef __LINT_F32
#undef __LINT_F1
#undef __LINT_F2
#undef __LINT_F3
#undef __LINT_I2
#undef __LINT_I3
#undef __LINT_F32_1
#undef __LINT_F32_2
#undef __LINT_F32_3
template <class T, class B> T select(T, T, B);
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

// ---- barriers: the flags are a scoped enum (mem_flags::mem_threadgroup; a bare mem_threadgroup is an error).
enum class mem_flags : uint { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4,
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

// ---- simdgroup_matrix<T, Cols, Rows> (T = float, half, bfloat): loads and stores exist for device and threadgroup
// pointers to the matrix's own element type only. The products take operands and accumulators of any of those
// element types (mixed precision, e.g. half8x8 operands into a float8x8 accumulator, is legal Metal).
template <class T, int Cols, int Rows> struct simdgroup_matrix {
  static_assert(is_same<T, float>::value || is_same<T, half>::value ||
                    is_same<T, bfloat>::value,
                "simdgroup_matrix elements are float, half or bfloat");
  simdgroup_matrix();
  simdgroup_matrix(T);
  vec<T, 2>& thread_elements();
  const vec<T, 2>& thread_elements() const;
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <class T, int Cols, int Rows> simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T);
#define __LINT_SIMDGROUP_MEMORY(AS)                                                                               \
  template <class T, int Cols, int Rows>                                                                          \
  void simdgroup_load(thread simdgroup_matrix<T, Cols, Rows>& d, const AS T* src, ulong elements_per_row = Cols,  \
                      ulong2 matrix_origin = ulong2(0, 0), bool transpose_matrix = false);                         \
  template <class T, int Cols, int Rows>                                                                          \
  void simdgroup_store(thread simdgroup_matrix<T, Cols, Rows> a, AS T* dst, ulong elements_per_row = Cols,         \
                       ulong2 matrix_origin = ulong2(0, 0), bool transpose_matrix = false);
__LINT_SIMDGROUP_MEMORY(device)
__LINT_SIMDGROUP_MEMORY(threadgroup)
#undef __LINT_SIMDGROUP_MEMORY
template <class TD, class TA, class TB, class TC, int Cols, int Rows, int K>
void simdgroup_multiply_accumulate(thread simdgroup_matrix<TD, Cols, Rows>& d,
                                   thread const simdgroup_matrix<TA, K, Rows>& a,
                                   thread const simdgroup_matrix<TB, Cols, K>& b,
                                   thread const simdgroup_matrix<TC, Cols, Rows>& c);
template <class TD, class TA, class TB, int Cols, int Rows, int K>
void simdgroup_multiply(thread simdgroup_matrix<TD, Cols, Rows>& d, thread const simdgroup_matrix<TA, K, Rows>& a,
                        thread const simdgroup_matrix<TB, Cols, K>& b);
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
