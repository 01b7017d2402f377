// Binding a kernel's parameters: the generated launcher names, for each parameter, where its value comes
// from (a [[buffer(i)]], a [[threadgroup(i)]] or a builtin attribute); the parameter's C++ type is taken
// from the kernel function itself, so templates, typedefs and macros need no parsing.
#pragma once
#include "../../runtime/launch.hpp"
#include "vector.hpp"

namespace msl_rt {

struct buffer_arg {
  int index;
  const char* name;
};
struct threadgroup_arg {
  int index;
  const char* name;
};
struct absent_arg {};  // a buffer whose [[function_constant(c)]] condition is false

enum class Builtin {
  thread_position_in_grid,
  threadgroup_position_in_grid,
  thread_position_in_threadgroup,
  threads_per_threadgroup,
  dispatch_threads_per_threadgroup,
  threadgroups_per_grid,
  threads_per_grid,
  grid_origin,
  grid_size,
  thread_index_in_threadgroup,
  thread_index_in_simdgroup,
  simdgroup_index_in_threadgroup,
  simdgroups_per_threadgroup,
  dispatch_simdgroups_per_threadgroup,
  threads_per_simdgroup,
  thread_execution_width,
  thread_index_in_quadgroup,
  quadgroup_index_in_threadgroup,
  quadgroups_per_threadgroup,
};
template <Builtin B> struct builtin_arg {};

// Value of a builtin attribute for the running thread, as up to three components.
template <Builtin B> void builtin_value(uint32_t v[3]) {
  const Group& g = group();
  const Geometry& geo = g.geo;
  uint32_t t = uint32_t(g.current);
  uint32_t pos[3] = {t % geo.size[0], t / geo.size[0] % geo.size[1], t / (geo.size[0] * geo.size[1])};
  auto one = [&](uint32_t x) { v[0] = x, v[1] = 0, v[2] = 0; };
  auto per_dim = [&](auto f) { for (int d = 0; d < 3; d++) v[d] = f(d); };
  uint32_t dispatch_threads = geo.dispatch_size[0] * geo.dispatch_size[1] * geo.dispatch_size[2];
  using enum Builtin;
  if constexpr (B == thread_position_in_grid) per_dim([&](int d) { return geo.group[d] * geo.dispatch_size[d] + pos[d]; });
  else if constexpr (B == threadgroup_position_in_grid) per_dim([&](int d) { return geo.group[d]; });
  else if constexpr (B == thread_position_in_threadgroup) per_dim([&](int d) { return pos[d]; });
  else if constexpr (B == threads_per_threadgroup) per_dim([&](int d) { return geo.size[d]; });
  else if constexpr (B == dispatch_threads_per_threadgroup) per_dim([&](int d) { return geo.dispatch_size[d]; });
  else if constexpr (B == threadgroups_per_grid) per_dim([&](int d) { return geo.groups[d]; });
  else if constexpr (B == threads_per_grid || B == grid_size) per_dim([&](int d) { return geo.grid[d]; });
  else if constexpr (B == grid_origin) per_dim([](int) { return 0u; });
  else if constexpr (B == thread_index_in_threadgroup) one(t);
  else if constexpr (B == thread_index_in_simdgroup) one(t % simd_width);
  else if constexpr (B == simdgroup_index_in_threadgroup) one(t / simd_width);
  else if constexpr (B == simdgroups_per_threadgroup) one((uint32_t(g.n) + simd_width - 1) / simd_width);
  else if constexpr (B == dispatch_simdgroups_per_threadgroup) one((dispatch_threads + simd_width - 1) / simd_width);
  else if constexpr (B == threads_per_simdgroup || B == thread_execution_width) one(simd_width);
  else if constexpr (B == thread_index_in_quadgroup) one(t % 4);
  else if constexpr (B == quadgroup_index_in_threadgroup) one(t / 4);
  else if constexpr (B == quadgroups_per_threadgroup) one((uint32_t(g.n) + 3) / 4);
}

template <class P, Builtin B> P bind(const builtin_arg<B>&) {
  uint32_t v[3];
  builtin_value<B>(v);
  if constexpr (metal::msl_vector_like<P>) {
    P r;
    for (int d = 0; d < metal::msl_components<P>; d++) r[d] = metal::msl_element_t<P>(v[d]);
    return r;
  } else {
    return P(v[0]);
  }
}

template <class P> P bind(const buffer_arg& b) {
  void* p = group().launch->buffers[b.index];
  if constexpr (std::is_pointer_v<P>) return reinterpret_cast<P>(p);
  else if constexpr (std::is_reference_v<P>) return *reinterpret_cast<std::remove_reference_t<P>*>(p);
  else return *reinterpret_cast<const P*>(p);
}

template <class P> P bind(const absent_arg&) {
  static_assert(std::is_pointer_v<P>, "a buffer disabled by a function constant must be a pointer");
  return nullptr;
}

template <class P> P bind(const threadgroup_arg& b) {
  static_assert(std::is_pointer_v<P> || std::is_reference_v<P>, "[[threadgroup(i)]] parameters are pointers or references");
  Group& g = group();
  unsigned char* p = g.memory.bytes + g.memory.dynamic_offset[b.index];
  if constexpr (std::is_pointer_v<P>) return reinterpret_cast<P>(p);
  else return *reinterpret_cast<std::remove_reference_t<P>*>(p);
}

// Before a launch: a buffer must be aligned for its element type, and a `constant T&` (or by-value)
// buffer must hold at least sizeof(T) bytes.
template <class P, class B> bool check_arg(Launch& l, const Kernel& k, const B& binder) {
  if constexpr (std::is_same_v<B, buffer_arg>) {
    using T = std::remove_cv_t<std::remove_pointer_t<std::remove_reference_t<P>>>;
    constexpr size_t align = alignof(std::conditional_t<std::is_void_v<T>, char, T>);
    if (reinterpret_cast<uintptr_t>(l.buffers[binder.index]) % align) {
      set_error(l, where(k.definition) + format(": kernel %s: buffer(%d) for parameter '%s' is not aligned to the %zu bytes "
                                                "its element type needs", k.name, binder.index, binder.name, align));
      return false;
    }
  }
  if constexpr (std::is_same_v<B, buffer_arg> && !std::is_pointer_v<P>) {
    size_t need = sizeof(std::remove_reference_t<P>);
    if (l.buffer_bytes[binder.index] < need) {
      set_error(l, where(k.definition) + format(": kernel %s: buffer(%d) for parameter '%s' has %llu bytes, but its type needs %zu",
                                                k.name, binder.index, binder.name,
                                                (unsigned long long)l.buffer_bytes[binder.index], need));
      return false;
    }
  }
  return true;
}

template <class... P, class... B> void invoke(void (*kernel)(P...), const B&... binders) { kernel(bind<P>(binders)...); }

// Returns 0, 1 (kernel error) or 2 (the caller's arguments do not fit the kernel).
template <class... P, class... B> int launch_kernel(Launch& l, const Kernel& k, void (*)(P...), const B&... binders) {
  if (!(check_arg<P>(l, k, binders) && ...)) return 2;
  return launch(l, k);
}

}  // namespace msl_rt
