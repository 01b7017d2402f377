// Kernels for tests/emulator/test_execution.py: grid geometry, argument binding, threadgroup memory.
#include <metal_stdlib>
using namespace metal;

// Every thread writes its builtin attributes at its linear position in the grid (16 values each).
kernel void positions(device uint* out [[buffer(0)]],
                      uint3 gid [[thread_position_in_grid]],
                      uint3 group [[threadgroup_position_in_grid]],
                      ushort3 local [[thread_position_in_threadgroup]],
                      uint3 size [[threads_per_threadgroup]],
                      uint3 groups [[threadgroups_per_grid]],
                      uint3 grid [[threads_per_grid]],
                      uint index [[thread_index_in_threadgroup]],
                      ushort lane [[thread_index_in_simdgroup]],
                      ushort simdgroup [[simdgroup_index_in_threadgroup]],
                      ushort simdgroups [[simdgroups_per_threadgroup]],
                      uint width [[threads_per_simdgroup]]) {
  device uint* o = out + ((gid.z * grid.y + gid.y) * grid.x + gid.x) * 16;
  o[0] = gid.x; o[1] = gid.y; o[2] = gid.z;
  o[3] = group.x; o[4] = group.y; o[5] = group.z;
  o[6] = local.x; o[7] = local.y; o[8] = local.z;
  o[9] = size.x * 10000 + size.y * 100 + size.z;
  o[10] = groups.x * 10000 + groups.y * 100 + groups.z;
  o[11] = index;
  o[12] = lane;
  o[13] = simdgroup;
  o[14] = simdgroups;
  o[15] = width;
}

struct Params {
  float scale;
  uint count;
  int2 offset;  // 8-byte aligned: the struct is 16 bytes
};

// Constant arguments from a ctypes Structure, a ctypes scalar and raw bytes.
kernel void constants(constant Params& p [[buffer(0)]],
                      constant float& bias [[buffer(1)]],
                      constant packed_float3& triple [[buffer(2)]],
                      device float* out [[buffer(3)]],
                      uint i [[thread_position_in_grid]]) {
  out[i] = float(p.count) * p.scale + float(p.offset.x - p.offset.y) + bias + triple.x + triple.y * triple.z + float(i);
}

// Two dynamic threadgroup buffers: each threadgroup reverses its slice through them.
kernel void dynamic_memory(device const float* in [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           threadgroup float* staging [[threadgroup(0)]],
                           threadgroup float4* extra [[threadgroup(1)]],
                           uint gid [[thread_position_in_grid]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint size [[threads_per_threadgroup]]) {
  staging[tid] = in[gid];
  extra[tid] = float4(in[gid]);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[gid] = staging[size - 1 - tid] + extra[size - 1 - tid].w;
}

// out[i] = in[i] * 2 over a grid of any size (dispatch_threads) or a padded one (dispatch).
kernel void twice(device const float* in [[buffer(0)]], device float* out [[buffer(1)]],
                  constant uint& n [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  if (i >= n) return;
  out[i] = in[i] * 2.0f;
}

// A block reduction over 256 threads: barriers and SIMD-group functions together.
kernel void block_sum(device const float* in [[buffer(0)]], device float* out [[buffer(1)]],
                      uint gid [[thread_position_in_grid]], uint group [[threadgroup_position_in_grid]],
                      ushort lane [[thread_index_in_simdgroup]], ushort sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float partial[8];
  float s = simd_sum(in[gid]);
  if (lane == 0) partial[sg] = s;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float t = simd_sum(lane < 8 ? partial[lane] : 0.0f);
    if (lane == 0) out[group] = t;
  }
}

kernel void copy_vectors(device const float4* in [[buffer(0)]], device float4* out [[buffer(1)]],
                         uint i [[thread_position_in_grid]]) {
  out[i] = in[i].wzyx;
}
