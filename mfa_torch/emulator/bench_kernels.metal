// Kernels timed by `python -m mfa_torch.emulator.bench`: typical shapes of the project's real kernels.
#include <metal_stdlib>
using namespace metal;

// Synchronisation throughput: every iteration is one SIMD-group function and one barrier per thread.
kernel void sync_points(device float* out [[buffer(0)]],
                        constant uint& iterations [[buffer(1)]],
                        uint tid [[thread_index_in_threadgroup]],
                        uint gid [[thread_position_in_grid]]) {
  float v = float(tid);
  for (uint i = 0; i < iterations; i++) {
    v += simd_shuffle_xor(v, ushort(1));
    threadgroup_barrier(mem_flags::mem_none);
  }
  out[gid] = v;
}

// C[M,N] = A[M,K] B[K,N], row-major fp32; M, N multiples of 32, K a multiple of 16.
// A threadgroup (4 SIMD-groups) computes a 32x32 tile of C; each SIMD-group a 16x16 quarter as 2x2
// simdgroup matrices, with K staged through threadgroup memory 16 at a time.
constant constexpr uint GEMM_TILE = 32, GEMM_K = 16;
kernel void gemm_f32(device const float* A [[buffer(0)]],
                     device const float* B [[buffer(1)]],
                     device float* C [[buffer(2)]],
                     constant uint3& mnk [[buffer(3)]],
                     uint2 group [[threadgroup_position_in_grid]],
                     ushort sid [[simdgroup_index_in_threadgroup]],
                     ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup float As[GEMM_TILE * GEMM_K];
  threadgroup float Bs[GEMM_K * GEMM_TILE];
  const uint N = mnk.y, K = mnk.z;
  const uint row0 = group.y * GEMM_TILE, col0 = group.x * GEMM_TILE;
  const uint sr = (sid / 2) * 16, sc = (sid % 2) * 16;
  simdgroup_float8x8 acc[2][2];
  for (uint i = 0; i < 2; i++)
    for (uint j = 0; j < 2; j++) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  for (uint k0 = 0; k0 < K; k0 += GEMM_K) {
    for (uint i = tid; i < GEMM_TILE * GEMM_K; i += 128) {
      As[i] = A[(row0 + i / GEMM_K) * K + k0 + i % GEMM_K];
      Bs[i] = B[(k0 + i / GEMM_TILE) * N + col0 + i % GEMM_TILE];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint kk = 0; kk < GEMM_K; kk += 8) {
      simdgroup_float8x8 a[2], b[2];
      for (uint i = 0; i < 2; i++) simdgroup_load(a[i], As, GEMM_K, ulong2(kk, sr + 8 * i));
      for (uint j = 0; j < 2; j++) simdgroup_load(b[j], Bs, GEMM_TILE, ulong2(sc + 8 * j, kk));
      for (uint i = 0; i < 2; i++)
        for (uint j = 0; j < 2; j++) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  for (uint i = 0; i < 2; i++)
    for (uint j = 0; j < 2; j++) simdgroup_store(acc[i][j], C, N, ulong2(col0 + sc + 8 * j, row0 + sr + 8 * i));
}

// Attention forward O = softmax(Q K^T / sqrt(D)) V for one (batch, head) per grid row, fp32, D = 64,
// sequence lengths multiples of 32. A threadgroup (4 SIMD-groups) owns 32 query rows, 8 per SIMD-group,
// and streams blocks of 32 keys and values through threadgroup memory with an online softmax.
constant constexpr uint ATT_D = 64, ATT_KEYS = 32;
kernel void attention_f32(device const float* Q [[buffer(0)]],
                          device const float* K [[buffer(1)]],
                          device const float* V [[buffer(2)]],
                          device float* O [[buffer(3)]],
                          constant uint2& lengths [[buffer(4)]],  // (L, S)
                          uint2 group [[threadgroup_position_in_grid]],
                          ushort sid [[simdgroup_index_in_threadgroup]],
                          ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup float Ks[ATT_KEYS * ATT_D];
  threadgroup float Vs[ATT_KEYS * ATT_D];
  const uint L = lengths.x, S = lengths.y, head = group.y;
  const uint q0 = group.x * 32 + sid * 8;
  device const float* q = Q + (ulong(head) * L + q0) * ATT_D;
  device const float* k = K + ulong(head) * S * ATT_D;
  device const float* v = V + ulong(head) * S * ATT_D;
  const float scale = rsqrt(float(ATT_D));
  simdgroup_float8x8 Qm[ATT_D / 8], Om[ATT_D / 8];
  for (uint d = 0; d < ATT_D / 8; d++) {
    simdgroup_load(Qm[d], q, ATT_D, ulong2(d * 8, 0));
    Om[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  }
  float m = -INFINITY, l = 0.0f;
  for (uint s0 = 0; s0 < S; s0 += ATT_KEYS) {
    for (uint i = tid; i < ATT_KEYS * ATT_D; i += 128) {
      Ks[i] = k[s0 * ATT_D + i];
      Vs[i] = v[s0 * ATT_D + i];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 Sm[ATT_KEYS / 8];
    float row_max = -INFINITY;
    for (uint j = 0; j < ATT_KEYS / 8; j++) {
      Sm[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      for (uint d = 0; d < ATT_D / 8; d++) {
        simdgroup_float8x8 Kt;
        simdgroup_load(Kt, Ks + j * 8 * ATT_D + d * 8, ATT_D, ulong2(0, 0), true);
        simdgroup_multiply_accumulate(Sm[j], Qm[d], Kt, Sm[j]);
      }
      Sm[j].thread_elements() *= scale;
      row_max = max(row_max, max(Sm[j].thread_elements()[0], Sm[j].thread_elements()[1]));
    }
    // the 8 values of a row sit in the 4 lanes that differ in lane bits 0 and 3
    row_max = max(row_max, simd_shuffle_xor(row_max, ushort(1)));
    row_max = max(row_max, simd_shuffle_xor(row_max, ushort(8)));
    const float m_new = max(m, row_max);
    const float correction = exp(m - m_new);
    float row_sum = 0.0f;
    for (uint j = 0; j < ATT_KEYS / 8; j++) {
      float2 p = exp(Sm[j].thread_elements() - m_new);
      Sm[j].thread_elements() = p;
      row_sum += p.x + p.y;
    }
    row_sum += simd_shuffle_xor(row_sum, ushort(1));
    row_sum += simd_shuffle_xor(row_sum, ushort(8));
    l = l * correction + row_sum;
    m = m_new;
    for (uint d = 0; d < ATT_D / 8; d++) {
      Om[d].thread_elements() *= correction;
      for (uint j = 0; j < ATT_KEYS / 8; j++) {
        simdgroup_float8x8 Vm;
        simdgroup_load(Vm, Vs, ATT_D, ulong2(d * 8, j * 8));
        simdgroup_multiply_accumulate(Om[d], Sm[j], Vm, Om[d]);
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  device float* o = O + (ulong(head) * L + q0) * ATT_D;
  for (uint d = 0; d < ATT_D / 8; d++) {
    Om[d].thread_elements() /= l;
    simdgroup_store(Om[d], o, ATT_D, ulong2(d * 8, 0));
  }
}
