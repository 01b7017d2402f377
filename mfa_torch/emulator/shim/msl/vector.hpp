// MSL vectors: 2, 3 and 4 components of any scalar type, with MSL sizes and alignments (float3 is
// 16 bytes, packed_float3 is 12), read and write swizzles, and component-wise operators.
#pragma once
#include <cstddef>

#include "scalar.hpp"

namespace metal {

template <class T, int N, bool Packed> struct basic_vec;
template <class T, int N> using vec = basic_vec<T, N, false>;
template <class T, int N> using packed_vec = basic_vec<T, N, true>;

template <int... I> constexpr bool msl_distinct_components() {
  constexpr int idx[] = {I...};
  for (size_t a = 0; a < sizeof...(I); a++)
    for (size_t b = a + 1; b < sizeof...(I); b++)
      if (idx[a] == idx[b]) return false;
  return true;
}

// A swizzle member such as v.zyx: shares the vector's storage and picks components I... .
template <class T, int N, int... I> struct msl_swizzle {
  T v[N];
  static constexpr int size = sizeof...(I);
  using value_type = vec<T, size>;

  operator value_type() const { return value_type(v[I]...); }
  T operator[](int i) const {
    constexpr int idx[] = {I...};
    return v[idx[i]];
  }
  msl_swizzle& operator=(const value_type& o) {
    static_assert(msl_distinct_components<I...>(), "MSL: a swizzle that repeats a component cannot be assigned to");
    int k = 0;
    ((v[I] = o.v[k++]), ...);
    return *this;
  }
  msl_swizzle& operator=(const msl_swizzle& o) { return *this = value_type(o); }
  template <class B> msl_swizzle& operator+=(const B& b) { return *this = value_type(*this) + b; }
  template <class B> msl_swizzle& operator-=(const B& b) { return *this = value_type(*this) - b; }
  template <class B> msl_swizzle& operator*=(const B& b) { return *this = value_type(*this) * b; }
  template <class B> msl_swizzle& operator/=(const B& b) { return *this = value_type(*this) / b; }
};

template <class X> struct msl_vector_traits {
  static constexpr bool is_vector = false;
  static constexpr int size = 1;
  using element = X;
};
template <class T, int N, bool P> struct msl_vector_traits<basic_vec<T, N, P>> {
  static constexpr bool is_vector = true;
  static constexpr int size = N;
  using element = T;
};
template <class T, int N, int... I> struct msl_vector_traits<msl_swizzle<T, N, I...>> {
  static constexpr bool is_vector = true;
  static constexpr int size = sizeof...(I);
  using element = T;
};
template <class X> concept msl_vector_like = msl_vector_traits<std::remove_cvref_t<X>>::is_vector;
template <class X> using msl_element_t = typename msl_vector_traits<std::remove_cvref_t<X>>::element;
template <class X> constexpr int msl_components = msl_vector_traits<std::remove_cvref_t<X>>::size;

// component i of a scalar (broadcast) or of a vector
template <class X> auto msl_component(const X& x, int i) {
  if constexpr (msl_vector_like<X>) return x[i];
  else return x;
}
template <msl_vector_like V> vec<msl_element_t<V>, msl_components<V>> msl_as_vec(const V& v) { return v; }

template <class T, int N, bool P> constexpr size_t msl_vec_alignment() { return P ? alignof(T) : sizeof(T) * (N == 3 ? 4 : N); }

// Members shared by all sizes. Copy operations are user-provided because the swizzle union members
// make the implicit ones unusable; they copy the components as one object, so that a vector load or store is one
// access (profile builds count it so). Conversions and operators take vectors by value for the same reason.
#define MSL_VEC_COMMON(N)                                                                                       \
  struct msl_components_of { T v[N]; };                                                                         \
  basic_vec() = default;                                                                                        \
  basic_vec(const basic_vec& o) { components() = o.components(); }                                              \
  basic_vec& operator=(const basic_vec& o) { components() = o.components(); return *this; }                    \
  msl_components_of& components() { return *reinterpret_cast<msl_components_of*>(v); }                         \
  const msl_components_of& components() const { return *reinterpret_cast<const msl_components_of*>(v); }       \
  template <msl_scalar U> basic_vec(U s) { for (int i = 0; i < N; i++) v[i] = T(s); }                              \
  template <class... A> requires(sizeof...(A) >= 2 && (msl_components<A> + ...) == N) basic_vec(A... parts) {      \
    int k = 0;                                                                                                  \
    ((fill_from(parts, k)), ...);                                                                               \
  }                                                                                                             \
  basic_vec(basic_vec<T, N, !P> o) { for (int i = 0; i < N; i++) v[i] = o.v[i]; }                               \
  template <class U, bool Q> requires(!std::is_same_v<U, T>) explicit basic_vec(basic_vec<U, N, Q> o) {          \
    for (int i = 0; i < N; i++) v[i] = T(o.v[i]);                                                               \
  }                                                                                                             \
  template <class U, int M, int... I> requires(sizeof...(I) == N && !std::is_same_v<U, T>)                      \
  explicit basic_vec(const msl_swizzle<U, M, I...>& o) : basic_vec(vec<U, N>(o)) {}                                 \
  T& operator[](int i) { return v[i]; }                                                                         \
  const T& operator[](int i) const { return v[i]; }                                                             \
  template <class B> basic_vec& operator+=(const B& b) { return *this = *this + b; }                             \
  template <class B> basic_vec& operator-=(const B& b) { return *this = *this - b; }                             \
  template <class B> basic_vec& operator*=(const B& b) { return *this = *this * b; }                             \
  template <class B> basic_vec& operator/=(const B& b) { return *this = *this / b; }                             \
  template <class B> basic_vec& operator%=(const B& b) { return *this = *this % b; }                             \
  template <class B> basic_vec& operator&=(const B& b) { return *this = *this & b; }                             \
  template <class B> basic_vec& operator|=(const B& b) { return *this = *this | b; }                             \
  template <class B> basic_vec& operator^=(const B& b) { return *this = *this ^ b; }                             \
  template <class B> basic_vec& operator<<=(const B& b) { return *this = *this << b; }                           \
  template <class B> basic_vec& operator>>=(const B& b) { return *this = *this >> b; }                           \
                                                                                                                \
 private:                                                                                                       \
  template <class A> void fill_from(const A& a, int& k) {                                                       \
    for (int i = 0; i < msl_components<A>; i++) v[k++] = T(msl_component(a, i));                                        \
  }                                                                                                             \
                                                                                                                \
 public:

#include "swizzles.inc"

template <class T, bool P> struct alignas(msl_vec_alignment<T, 2, P>()) basic_vec<T, 2, P> {
  union {
    T v[2];
    struct { T x, y; };
    struct { T r, g; };
    MSL_SWIZZLES_2(T)
  };
  MSL_VEC_COMMON(2)
};
template <class T, bool P> struct alignas(msl_vec_alignment<T, 3, P>()) basic_vec<T, 3, P> {
  union {
    T v[3];
    struct { T x, y, z; };
    struct { T r, g, b; };
    MSL_SWIZZLES_3(T)
  };
  MSL_VEC_COMMON(3)
};
template <class T, bool P> struct alignas(msl_vec_alignment<T, 4, P>()) basic_vec<T, 4, P> {
  union {
    T v[4];
    struct { T x, y, z, w; };
    struct { T r, g, b, a; };
    MSL_SWIZZLES_4(T)
  };
  MSL_VEC_COMMON(4)
};
#undef MSL_VEC_COMMON

// ---- component-wise operators ---------------------------------------------------------------------
// vector op vector needs equal sizes and element types (MSL has no implicit vector conversions);
// vector op scalar converts the scalar to the vector's element type.
template <class A, class B> using msl_common_element_t = msl_element_t<std::conditional_t<msl_vector_like<A>, A, B>>;

template <class R, class A, class B, class F> vec<R, std::max(msl_components<A>, msl_components<B>)> msl_zip(A a, B b, F f) {
  using E = msl_common_element_t<A, B>;
  if constexpr (msl_vector_like<A> && msl_vector_like<B>) {
    static_assert(msl_components<A> == msl_components<B>, "MSL: vector operands of different sizes");
    static_assert(std::is_same_v<msl_element_t<A>, msl_element_t<B>>, "MSL: vector operands of different element types need an explicit conversion");
  }
  constexpr int n = std::max(msl_components<A>, msl_components<B>);
  vec<R, n> r;
  for (int i = 0; i < n; i++) r.v[i] = R(f(E(msl_component(a, i)), E(msl_component(b, i))));
  return r;
}

#define MSL_VEC_ARITH(OP)                                                                                          \
  template <class A, class B> requires((msl_vector_like<A> || msl_vector_like<B>) && (msl_vector_like<A> || msl_scalar<A>) &&       \
                                       (msl_vector_like<B> || msl_scalar<B>))                                               \
  auto operator OP(const A& a, const B& b) {                                                                        \
    return msl_zip<msl_common_element_t<A, B>>(a, b, [](auto x, auto y) { return x OP y; });                                \
  }
MSL_VEC_ARITH(+)
MSL_VEC_ARITH(-)
MSL_VEC_ARITH(*)
MSL_VEC_ARITH(/)
MSL_VEC_ARITH(%)
MSL_VEC_ARITH(&)
MSL_VEC_ARITH(|)
MSL_VEC_ARITH(^)
MSL_VEC_ARITH(<<)
MSL_VEC_ARITH(>>)
MSL_VEC_ARITH(&&)
MSL_VEC_ARITH(||)
#undef MSL_VEC_ARITH

#define MSL_VEC_COMPARE(OP)                                                                                        \
  template <class A, class B> requires((msl_vector_like<A> || msl_vector_like<B>) && (msl_vector_like<A> || msl_scalar<A>) &&       \
                                       (msl_vector_like<B> || msl_scalar<B>))                                               \
  auto operator OP(const A& a, const B& b) {                                                                        \
    return msl_zip<bool>(a, b, [](auto x, auto y) { return x OP y; });                                                  \
  }
MSL_VEC_COMPARE(==)
MSL_VEC_COMPARE(!=)
MSL_VEC_COMPARE(<)
MSL_VEC_COMPARE(<=)
MSL_VEC_COMPARE(>)
MSL_VEC_COMPARE(>=)
#undef MSL_VEC_COMPARE

template <class R, msl_vector_like V, class F> vec<R, msl_components<V>> msl_map(V a, F f) {
  vec<R, msl_components<V>> r;
  for (int i = 0; i < msl_components<V>; i++) r.v[i] = R(f(a[i]));
  return r;
}
template <msl_vector_like V> auto operator-(const V& a) { return msl_map<msl_element_t<V>>(a, [](auto x) { return -x; }); }
template <msl_vector_like V> auto operator+(const V& a) { return msl_as_vec(a); }
template <msl_vector_like V> auto operator~(const V& a) { return msl_map<msl_element_t<V>>(a, [](auto x) { return ~x; }); }
template <msl_vector_like V> auto operator!(const V& a) { return msl_map<bool>(a, [](auto x) { return !x; }); }

template <msl_vector_like V> bool all(V a) {
  for (int i = 0; i < msl_components<V>; i++) if (!a[i]) return false;
  return true;
}
template <msl_vector_like V> bool any(V a) {
  for (int i = 0; i < msl_components<V>; i++) if (a[i]) return true;
  return false;
}
inline bool all(bool b) { return b; }
inline bool any(bool b) { return b; }

#define MSL_VEC_TYPEDEFS(T)                                                                                             \
  typedef vec<T, 2> T##2; typedef vec<T, 3> T##3; typedef vec<T, 4> T##4;                                           \
  typedef packed_vec<T, 2> packed_##T##2; typedef packed_vec<T, 3> packed_##T##3; typedef packed_vec<T, 4> packed_##T##4;
MSL_VEC_TYPEDEFS(float)
MSL_VEC_TYPEDEFS(half)
MSL_VEC_TYPEDEFS(bfloat)
MSL_VEC_TYPEDEFS(int)
MSL_VEC_TYPEDEFS(uint)
MSL_VEC_TYPEDEFS(short)
MSL_VEC_TYPEDEFS(ushort)
MSL_VEC_TYPEDEFS(char)
MSL_VEC_TYPEDEFS(uchar)
MSL_VEC_TYPEDEFS(long)
MSL_VEC_TYPEDEFS(ulong)
MSL_VEC_TYPEDEFS(bool)
#undef MSL_VEC_TYPEDEFS

static_assert(sizeof(float3) == 16 && alignof(float3) == 16, "MSL float3 is 16 bytes");
static_assert(sizeof(packed_float3) == 12 && alignof(packed_float3) == 4, "MSL packed_float3 is 12 bytes");
static_assert(sizeof(half4) == 8 && sizeof(half3) == 8 && sizeof(ushort2) == 4 && sizeof(uchar3) == 4);
static_assert(sizeof(bool2) == 2 && sizeof(float2) == 8 && alignof(float2) == 8);

}  // namespace metal
