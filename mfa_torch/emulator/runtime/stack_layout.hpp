// Where a worker's fiber stacks lie: one mapping of [guard page][stack] per GPU thread, then an unmapped tail, so
// that nothing lies within stacks_tail_guard above a frame but fiber stacks (profile builds let such addresses go as
// thread memory without looking further, profile_hooks.hpp).
#pragma once
#include <cstddef>

namespace msl_rt {

constexpr size_t fiber_stack_size = 256 * 1024;
constexpr size_t guard_size = 4096;
constexpr size_t stacks_tail_guard = 64 * 1024;
inline size_t stacks_bytes(int count) { return size_t(count) * (fiber_stack_size + guard_size) + stacks_tail_guard; }

}  // namespace msl_rt
