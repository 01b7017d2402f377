// Lane-layout self-test: the first thing to run on a new GPU. Every kernel reads and writes simdgroup_matrix
// elements through thread_elements() at the positions mfa_tile_row / mfa_tile_col give, a layout Apple does not
// specify. This kernel records, per lane, what simdgroup_load put in thread_elements() and where the helpers say
// it sits, and one simdgroup_multiply_accumulate on known operands; mfa_torch/doctor/lane_layout.py compares them
// with the documented layout and an fp64 product.
//
// One SIMD-group (a 1 x 1 x 1 grid of 32 threads). Buffers:
//   0 iota (64 float, row-major 8x8, element i = i), 1-3 a, b, c (64 float each, row-major 8x8),
//   4 loaded (4 x 32 x 2 float): per load, per lane, thread_elements() of the loaded iota; loads in order:
//     device plain, device transposed, threadgroup plain, threadgroup transposed (all origin 0),
//   5 coords (32 x 2 uint): per lane, mfa_tile_row and mfa_tile_col,
//   6 product (64 float, row-major 8x8): a * b + c by the matrix unit, stored with simdgroup_store.
#include <metal_stdlib>
using namespace metal;
#include "attention_tiles.h"

inline void record(device float* loaded, uint load, simdgroup_float8x8 m, ushort lane) {
  const float2 e = m.thread_elements();
  loaded[(load * 32 + lane) * 2] = e.x;
  loaded[(load * 32 + lane) * 2 + 1] = e.y;
}

[[max_total_threads_per_threadgroup(32)]]
kernel void lane_layout_self_test(device const float* iota [[buffer(0)]],
                                  device const float* a [[buffer(1)]],
                                  device const float* b [[buffer(2)]],
                                  device const float* c [[buffer(3)]],
                                  device float* loaded [[buffer(4)]],
                                  device uint* coords [[buffer(5)]],
                                  device float* product [[buffer(6)]],
                                  ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float staged[64];
  for (uint i = lane; i < 64; i += 32) staged[i] = iota[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);

  simdgroup_float8x8 m;
  simdgroup_load(m, iota, 8);
  record(loaded, 0, m, lane);
  simdgroup_load(m, iota, 8, ulong2(0, 0), true);
  record(loaded, 1, m, lane);
  simdgroup_load(m, staged, 8);
  record(loaded, 2, m, lane);
  simdgroup_load(m, staged, 8, ulong2(0, 0), true);
  record(loaded, 3, m, lane);

  coords[lane * 2] = mfa_tile_row(lane);
  coords[lane * 2 + 1] = mfa_tile_col(lane);

  simdgroup_float8x8 a_tile, b_tile, c_tile, d_tile;
  simdgroup_load(a_tile, a, 8);
  simdgroup_load(b_tile, b, 8);
  simdgroup_load(c_tile, c, 8);
  simdgroup_multiply_accumulate(d_tile, a_tile, b_tile, c_tile);
  simdgroup_store(d_tile, product, 8);
}
