// Kernels whose work counts are known by hand (tests/emulator/test_counters.py derives each one in a comment).
#include <metal_stdlib>
using namespace metal;

// Per thread: one 8-byte half4 load, one 16-byte float4 load, one 4-byte scalar load, one 8-byte float2 store and
// one 4-byte scalar store from/to device memory; one 4-byte read of a constant buffer.
kernel void vector_accesses(device const half4* h [[buffer(0)]], device const float4* f [[buffer(1)]],
                            device const float* s [[buffer(2)]], device float2* out2 [[buffer(3)]],
                            device float* out1 [[buffer(4)]], constant float& scale [[buffer(5)]],
                            uint i [[thread_position_in_grid]]) {
  const half4 a = h[i];
  const float4 b = f[i];
  const float c = s[i];
  out2[i] = float2(b.x + c, b.w) * scale;
  out1[i] = float(a.y);
}

// Per threadgroup of 64: two barriers; per thread two 4-byte threadgroup stores and two loads.
kernel void staged(device const float* in [[buffer(0)]], device float* out [[buffer(1)]],
                   uint i [[thread_position_in_grid]], ushort t [[thread_index_in_threadgroup]]) {
  threadgroup float tile[64];
  tile[t] = in[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const float mine = tile[63 - t];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  tile[t] = mine * 2.0f;
  out[i] = tile[t];
}

// One SIMD-group: two simdgroup_loads from device (half), one to threadgroup staging and back, two MMA (half*half
// accumulating into float), one float store to device. Tiles alive at once: a, b (half: 1 register each), c, d
// (float: 2 each) = 6 registers.
kernel void tiles(device const half* a [[buffer(0)]], device const half* b [[buffer(1)]], device float* c [[buffer(2)]],
                  ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup half staging[64];
  simdgroup_half8x8 ta, tb;
  simdgroup_float8x8 tc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f), td;
  simdgroup_load(ta, a, 8);
  simdgroup_load(tb, b, 8);
  simdgroup_store(tb, staging, 8);
  simdgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_load(tb, staging, 8);
  simdgroup_multiply_accumulate(td, ta, tb, tc);
  simdgroup_multiply_accumulate(tc, ta, tb, td);
  simdgroup_store(tc, c, 8);
  (void)lane;
}

// Per thread: exp of a float4 (4), a float division (1), x /= y (1), rsqrt (1), exp2 of a half (1, with a conversion
// to half and one back); integer divisions and divisions in constant expressions count nothing. Per SIMD-group
// call: one shuffle, one reduction.
constant constexpr uint HALF_WIDTH = 64 / 2;
kernel void math_and_simd(device const float* in [[buffer(0)]], device float* out [[buffer(1)]],
                          device int* quotients [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  float values[HALF_WIDTH / 16];
  const float x = in[i];
  const float4 e = exp(float4(x, x + 1.0f, x + 2.0f, x + 3.0f));
  float y = e.x / (1.0f + e.y);
  y /= 2.0f + e.z;
  values[0] = y + rsqrt(1.0f + e.w) + float(exp2(half(x)));
  values[1] = simd_shuffle_xor(values[0], ushort(1)) + simd_sum(x);
  quotients[i] = int(i) / 3 + -7 / 2;
  out[i] = values[0] + values[1];
}

// Per thread: three half -> float conversions (a.x, a.y, product) and one float -> half, none for the half product;
// a bfloat sum is computed in float: two conversions to float and one back.
kernel void conversions(device const half2* h [[buffer(0)]], device half* out [[buffer(1)]],
                        device const bfloat* b [[buffer(2)]], device bfloat* bout [[buffer(3)]],
                        uint i [[thread_position_in_grid]]) {
  const half2 a = h[i];
  const half product = a.x * a.y;
  out[i] = half(float(a.x) + float(a.y) + float(product) * 0.0f);
  const bfloat v = b[i];
  bout[i] = v + v;
}

// Per thread: one atomic add on device memory (a 4-byte read-modify-write: 8 bytes moved, one access).
kernel void atomics(device atomic_uint* counter [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  atomic_fetch_add_explicit(counter, i, memory_order_relaxed);
}
