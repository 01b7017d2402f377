// Kernels for the checked modes (tests/emulator/test_checked_modes.py); expected lines are marked.
#include <metal_stdlib>
using namespace metal;

// Each thread reads its neighbour's slot: correct only with a barrier that orders threadgroup memory
// (barrier: 0 none, 1 mem_threadgroup, 2 mem_none, an execution barrier only).
kernel void neighbour(device float* out [[buffer(0)]],
                      constant uint& barrier [[buffer(1)]],
                      ushort tid [[thread_index_in_threadgroup]],
                      uint gid [[thread_position_in_grid]]) {
  threadgroup float tile[64];
  tile[tid] = float(gid);  // mark: tile-write
  if (barrier == 1) threadgroup_barrier(mem_flags::mem_threadgroup);
  if (barrier == 2) threadgroup_barrier(mem_flags::mem_none);
  out[gid] = tile[(tid + 63) % 64];  // mark: tile-read
}

// Every thread of the threadgroup writes the same device element.
kernel void device_race(device uint* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  out[0] = tid;  // mark: device-write
}

// Data exchanged through SIMD-group functions, atomics and barriers: no race.
kernel void synchronised(device float* out [[buffer(0)]], device atomic_uint* count [[buffer(1)]],
                         ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]],
                         uint gid [[thread_position_in_grid]]) {
  threadgroup float partial[2];
  float v = simd_shuffle_xor(float(gid), ushort(1)) + simd_sum(1.0f);
  if (lane == 0) partial[tid / 32] = v;
  atomic_fetch_add_explicit(count, 1u, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[gid] = partial[1 - tid / 32] + v;
}

kernel void copy_shifted(device const float* in [[buffer(0)]],
                         device float* out [[buffer(1)]],
                         constant int& read_shift [[buffer(2)]],
                         constant int& write_shift [[buffer(3)]],
                         uint gid [[thread_position_in_grid]]) {
  float v = in[int(gid) + read_shift];  // mark: oob-read
  out[int(gid) + write_shift] = v;      // mark: oob-write
}

kernel void divergent_barrier(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  if (tid < 32) threadgroup_barrier(mem_flags::mem_threadgroup);  // mark: first-barrier
  else threadgroup_barrier(mem_flags::mem_threadgroup);           // mark: second-barrier
  out[tid] = 1.0f;
}

// Dispatched with 33 threads: thread 32 writes one element past the end of `first`.
kernel void threadgroup_overflow(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float first[32];
  threadgroup float second[32];
  second[tid % 32] = 2.0f;
  first[tid] = 1.0f;  // mark: threadgroup-overflow
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[tid] = first[tid % 32] + second[tid % 32];
}

kernel void wild_pointer(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  out[tid] = ((device float*)(64))[tid];  // mark: wild
}
