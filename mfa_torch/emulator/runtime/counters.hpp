// Work counters of profile builds (-DMSL_PROFILE): exact counts of what the kernel code does as written.
//
// Memory: the kernel is compiled at -O0 with g++'s ThreadSanitizer instrumentation, which calls __tsan_readN /
// __tsan_writeN before every load and store the source makes, so no optimiser can merge, hoist or drop one. Those
// callbacks are defined here (no sanitizer runtime is linked): each access is classified by its address into device
// buffers, constant buffers and the threadgroup's memory; everything else (thread memory: the fiber's stack, and the
// runtime's own data) is registers and not counted. The shim's SIMD-group functions do their own memory accesses
// "quietly" and count them as Metal defines them (a simdgroup_load is one access per lane).
// Everything else (barriers, MMA, shuffles, transcendentals, conversions, live tiles) is counted by the shim and the
// scheduler where it happens. Without MSL_PROFILE the counting macros expand to nothing.
#pragma once
#include <cstddef>
#include <cstdint>

namespace msl_rt {

// Order and names mirrored by mfa_torch/emulator/counters.py.
enum Counter : int {
  device_bytes, device_accesses, constant_bytes, constant_accesses, threadgroup_bytes, threadgroup_accesses,
  barriers, shuffles, simd_reductions, transcendentals, divisions, conversions, mma,
  counter_count
};
constexpr int mma_types = 3;  // float, half, bfloat: mma_by_type is indexed by (a, b, c, d) operand types
constexpr int mma_by_type_count = mma_types * mma_types * mma_types * mma_types;

// Slots of msl_launch::profile: the counters, then mma_by_type, then the two peaks.
constexpr int profile_mma_by_type = 32;
constexpr int profile_tile_registers = profile_mma_by_type + mma_by_type_count;
constexpr int profile_threadgroup_memory = profile_tile_registers + 1;
constexpr int profile_slots = profile_threadgroup_memory + 1;
static_assert(counter_count <= profile_mma_by_type);

struct Tally {
  uint64_t counts[counter_count] = {};
  uint64_t mma_by_type[mma_by_type_count] = {};
  uint64_t peak_tile_registers = 0;  // 32-bit registers of simdgroup_matrix objects alive at once in one thread
  void add(const Tally& o) {
    for (int i = 0; i < counter_count; i++) counts[i] += o.counts[i];
    for (int i = 0; i < mma_by_type_count; i++) mma_by_type[i] += o.mma_by_type[i];
    if (o.peak_tile_registers > peak_tile_registers) peak_tile_registers = o.peak_tile_registers;
  }
};

// Per GPU thread: tile registers alive now, and how deep the thread is inside shim code whose own accesses and
// conversions are not the kernel's.
struct ThreadTally {
  uint64_t tile_registers = 0;
  int quiet = 0;
};

}  // namespace msl_rt
