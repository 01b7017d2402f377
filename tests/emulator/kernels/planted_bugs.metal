// Kernels with bugs a GPU would not report (or would turn into wrong results or hangs). The emulator
// must report each, naming this file and the line marked with the comment `mark: <name>`.
#include <metal_stdlib>
using namespace metal;

kernel void divergent_barrier(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  if (tid < 32) {
    threadgroup_barrier(mem_flags::mem_threadgroup);  // mark: divergent-first
  } else {
    threadgroup_barrier(mem_flags::mem_threadgroup);  // mark: divergent-second
  }
  out[tid] = 1.0f;
}

kernel void early_return(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  if (tid == 5) return;
  threadgroup_barrier(mem_flags::mem_threadgroup);  // mark: early-return
  out[tid] = 1.0f;
}

// Lanes 0-15 reach simd_sum, lanes 16-31 go straight to the barrier.
kernel void partial_simd(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  float v = 1.0f;
  if (tid % 32 < 16) v = simd_sum(v);  // mark: partial-simd
  threadgroup_barrier(mem_flags::mem_threadgroup);  // mark: partial-simd-barrier
  out[tid] = v;
}

kernel void different_simd_functions(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  float v = float(tid);
  if (tid % 2 == 0) v = simd_max(v);  // mark: simd-first
  else v = simd_min(v);               // mark: simd-second
  out[tid] = v;
}

kernel void too_much_threadgroup_memory(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float big[33 * 256];  // mark: 33-kib
  big[tid] = 1.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[tid] = big[tid];
}

// 16 KiB here plus the dynamic buffer: too much when the buffer is larger than 16 KiB.
kernel void static_plus_dynamic(device float* out [[buffer(0)]],
                                threadgroup float* dynamic_buffer [[threadgroup(0)]],
                                uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float half_of_it[16 * 256];  // mark: static-plus-dynamic
  half_of_it[tid] = 1.0f;
  dynamic_buffer[tid] = 2.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[tid] = half_of_it[tid] + dynamic_buffer[tid];
}

// Reads threadgroup memory nobody wrote: the emulator poisons it (all bits set) for every threadgroup.
kernel void uninitialised_read(device float* out [[buffer(0)]], device int* iout [[buffer(1)]],
                               uint tid [[thread_index_in_threadgroup]],
                               uint group [[threadgroup_position_in_grid]]) {
  threadgroup float floats[64];
  threadgroup int ints[64];
  if (tid < 32 && group == 0) floats[tid] = 1.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[group * 64 + tid] = floats[tid];
  iout[group * 64 + tid] = ints[tid];
}

kernel void nonuniform_broadcast(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  out[lane] = simd_broadcast(float(lane), ushort(lane % 2));  // mark: broadcast
}

kernel void wild_pointer(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  device float* nowhere = (device float*)(16);
  out[tid] = nowhere[tid];  // mark: wild-pointer
}

kernel void partial_matrix(device float* out [[buffer(0)]]) {
  simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
  simdgroup_multiply_accumulate(m, m, m, m);  // mark: partial-matrix
  simdgroup_store(m, out);
}

// Threads run a different number of iterations of a loop with a barrier in it.
kernel void barrier_in_divergent_loop(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  float acc = 0.0f;
  for (uint i = 0; i < 2 + tid % 2; i++) {
    acc += 1.0f;
    threadgroup_barrier(mem_flags::mem_none);  // mark: loop-barrier
  }
  out[tid] = acc;
}

kernel void integer_division(device int* out [[buffer(0)]], constant int& divisor [[buffer(1)]],
                             uint tid [[thread_index_in_threadgroup]]) {
  out[tid] = 100 / divisor;  // mark: division
}

// A spin-wait for a flag nobody sets (on a GPU: a hang, or a watchdog reset).
kernel void endless_spin(device atomic_int* flag [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  while (atomic_load_explicit(flag, memory_order_relaxed) == 0) {  // mark: spin
  }
}

// A transposed simdgroup_load or simdgroup_store with a non-zero origin: Metal does not say whether the origin is
// applied before or after the transpose, so the result may differ on hardware.
kernel void transposed_load_at_origin(device float* out [[buffer(0)]]) {
  simdgroup_float8x8 m;
  simdgroup_load(m, out, 16, ulong2(8, 0), true);  // mark: transposed-load-origin
  simdgroup_store(m, out, 16);
}

kernel void transposed_store_at_origin(device float* out [[buffer(0)]]) {
  simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
  simdgroup_store(m, out, 16, ulong2(0, 8), true);  // mark: transposed-store-origin
}

// Launched with more threads than its attribute allows (Metal rejects such a dispatch).
[[max_total_threads_per_threadgroup(64)]]
kernel void limited_to_64_threads(device float* out [[buffer(0)]],  // mark: limited-kernel
                                  uint tid [[thread_index_in_threadgroup]]) {
  out[tid] = 1.0f;
}
