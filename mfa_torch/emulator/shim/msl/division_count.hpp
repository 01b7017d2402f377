// Profile builds count the kernel's floating-point divisions. The driver rewrites every `/` of the kernel source
// into `/ ::msl_rt::division_probe /` (and `x /= y` into `x /= ::msl_rt::DivisionProbe{} = y`): `a / probe` keeps
// `a`, and dividing that by `b` computes `a / b` unchanged while counting one division per floating-point
// component. Constant expressions (array bounds, template arguments) still evaluate, and count nothing.
#pragma once
#include <type_traits>

#include "vector.hpp"

namespace msl_rt {

template <class A> struct Dividend {
  A value;
};
template <class B> struct Divisor {
  B value;
};

template <class R> constexpr void count_division() {
  if constexpr (metal::msl_floating<metal::msl_element_t<R>>)
    if (!std::is_constant_evaluated()) {
      MSL_COUNT(divisions, metal::msl_components<R>);
      MSL_COUNT(transcendentals, metal::msl_components<R>);  // the kernel's own: not counted inside quiet shim code
    }
}

struct DivisionProbe {
  template <class B> constexpr Divisor<std::remove_cvref_t<B>> operator=(B&& b) const { return {b}; }
};
inline constexpr DivisionProbe division_probe{};

template <class A> constexpr Dividend<std::remove_cvref_t<A>> operator/(A&& a, DivisionProbe) { return {a}; }

template <class A, class B> constexpr auto operator/(const Dividend<A>& a, B&& b) {
  auto r = a.value / b;
  count_division<decltype(r)>();
  return r;
}

// x /= y (vectors do `*this = *this / y` themselves)
template <class A, class B> requires(!metal::msl_vector_like<A>) constexpr A& operator/=(A& a, const Divisor<B>& b) {
  a = Dividend<A>{a} / b.value;
  return a;
}
template <class A, class B> constexpr auto operator/(const A& a, const Divisor<B>& b) {
  return Dividend<A>{a} / b.value;
}

}  // namespace msl_rt
