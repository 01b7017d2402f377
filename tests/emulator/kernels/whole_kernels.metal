// Whole kernels of the kind the project ships, checked against fp64 references in test_whole_kernels.py.
#include <metal_stdlib>
using namespace metal;

// C[M,N] (float) = A[M,K] B[K,N] (half, row-major), any M, N, K multiple of 8. A threadgroup of
// 2x2 SIMD-groups computes a 32x32 tile; edges are zero-padded when staging and masked when storing.
constant constexpr uint BM = 32, BN = 32, BK = 8;
kernel void gemm_half(device const half* A [[buffer(0)]],
                      device const half* B [[buffer(1)]],
                      device float* C [[buffer(2)]],
                      constant uint3& mnk [[buffer(3)]],
                      uint2 group [[threadgroup_position_in_grid]],
                      ushort sid [[simdgroup_index_in_threadgroup]],
                      ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup half As[BM * BK];
  threadgroup half Bs[BK * BN];
  threadgroup float Cs[BM * BN];
  const uint M = mnk.x, N = mnk.y, K = mnk.z;
  const uint row0 = group.y * BM, col0 = group.x * BN;
  const uint sr = (sid / 2) * 16, sc = (sid % 2) * 16;
  simdgroup_float8x8 acc[2][2];
  for (uint i = 0; i < 2; i++)
    for (uint j = 0; j < 2; j++) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  for (uint k0 = 0; k0 < K; k0 += BK) {
    for (uint e = tid; e < BM * BK; e += 128) {
      uint r = row0 + e / BK, c = col0 + e % BN;
      As[e] = r < M ? A[r * K + k0 + e % BK] : 0.0h;
      Bs[e] = c < N ? B[(k0 + e / BN) * N + c] : 0.0h;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_half8x8 a[2], b[2];
    for (uint i = 0; i < 2; i++) simdgroup_load(a[i], As, BK, ulong2(0, sr + 8 * i));
    for (uint j = 0; j < 2; j++) simdgroup_load(b[j], Bs, BN, ulong2(sc + 8 * j, 0));
    for (uint i = 0; i < 2; i++)
      for (uint j = 0; j < 2; j++) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  for (uint i = 0; i < 2; i++)
    for (uint j = 0; j < 2; j++) simdgroup_store(acc[i][j], Cs, BN, ulong2(sc + 8 * j, sr + 8 * i));
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint e = tid; e < BM * BN; e += 128) {
    uint r = row0 + e / BN, c = col0 + e % BN;
    if (r < M && c < N) C[r * N + c] = Cs[e];
  }
}

// Causal attention forward with an online softmax in base 2 (MFA's formulation), half Q/K/V, float
// output O and log-sum-exp (natural log) per query row. Head dimension 32; queries and keys in blocks
// of 8 (one simdgroup_matrix); a threadgroup has 2 SIMD-groups, each owning 8 query rows. Keys past
// the sequence end or past the query position (causal) are masked.
constant constexpr uint HD = 32, KB = 16;
struct AttentionParams {
  uint L, S;
  float scale;
};
kernel void attention_causal(device const half* Q [[buffer(0)]],
                             device const half* K [[buffer(1)]],
                             device const half* V [[buffer(2)]],
                             device float* O [[buffer(3)]],
                             device float* LSE [[buffer(4)]],
                             constant AttentionParams& p [[buffer(5)]],
                             uint2 group [[threadgroup_position_in_grid]],
                             ushort sid [[simdgroup_index_in_threadgroup]],
                             ushort lane [[thread_index_in_simdgroup]],
                             ushort tid [[thread_index_in_threadgroup]]) {
  threadgroup float Qs[2][8 * HD];
  threadgroup float Ks[KB * HD];
  threadgroup float Vs[KB * HD];
  threadgroup float Os[2][8 * HD];
  const uint head = group.y, q0 = group.x * 16 + sid * 8;
  const float log2e_scale = p.scale * M_LOG2E_F;
  // stage this SIMD-group's 8 query rows as float (rows past L read as zero)
  for (uint e = lane; e < 8 * HD; e += 32) {
    uint r = q0 + e / HD;
    Qs[sid][e] = r < p.L ? float(Q[(head * p.L + r) * HD + e % HD]) : 0.0f;
  }
  simdgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 Qm[HD / 8], Om[HD / 8];
  for (uint d = 0; d < HD / 8; d++) {
    simdgroup_load(Qm[d], Qs[sid], HD, ulong2(d * 8, 0));
    Om[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  }
  // this lane's row and columns in every 8x8 tile (facts/metal.md lane layout)
  const uint row = q0 + ((lane >> 4) & 1) * 4 + ((lane >> 1) & 3);
  const uint col = ((lane >> 3) & 1) * 4 + (lane & 1) * 2;
  float m = -INFINITY, l = 0.0f;
  const uint last_key = min(p.S, group.x * 16 + 16);  // causal: no query of this threadgroup sees further
  for (uint s0 = 0; s0 < last_key; s0 += KB) {
    for (uint e = tid; e < KB * HD; e += 64) {
      uint s = s0 + e / HD;
      Ks[e] = s < p.S ? float(K[(head * p.S + s) * HD + e % HD]) : 0.0f;
      Vs[e] = s < p.S ? float(V[(head * p.S + s) * HD + e % HD]) : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 Sm[KB / 8];
    float block_max = -INFINITY;
    for (uint j = 0; j < KB / 8; j++) {
      Sm[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      for (uint d = 0; d < HD / 8; d++) {
        simdgroup_float8x8 Kt;
        simdgroup_load(Kt, Ks + j * 8 * HD + d * 8, HD, ulong2(0, 0), true);
        simdgroup_multiply_accumulate(Sm[j], Qm[d], Kt, Sm[j]);
      }
      thread float2& s = Sm[j].thread_elements();
      for (uint t = 0; t < 2; t++) {
        uint key = s0 + j * 8 + col + t;
        s[t] = (key < p.S && key <= row) ? s[t] * log2e_scale : -INFINITY;
        block_max = max(block_max, s[t]);
      }
    }
    block_max = max(block_max, simd_shuffle_xor(block_max, ushort(1)));
    block_max = max(block_max, simd_shuffle_xor(block_max, ushort(8)));
    const float m_new = max(m, block_max);
    // rows with every key masked so far keep m = -inf: avoid inf - inf
    const float correction = m_new == -INFINITY ? 1.0f : exp2(m - m_new);
    float block_sum = 0.0f;
    for (uint j = 0; j < KB / 8; j++) {
      thread float2& s = Sm[j].thread_elements();
      s = m_new == -INFINITY ? float2(0.0f) : exp2(s - m_new);
      block_sum += s.x + s.y;
    }
    block_sum += simd_shuffle_xor(block_sum, ushort(1));
    block_sum += simd_shuffle_xor(block_sum, ushort(8));
    l = l * correction + block_sum;
    m = m_new;
    for (uint d = 0; d < HD / 8; d++) {
      Om[d].thread_elements() *= correction;
      for (uint j = 0; j < KB / 8; j++) {
        simdgroup_float8x8 Vm;
        simdgroup_load(Vm, Vs, HD, ulong2(d * 8, j * 8));
        simdgroup_multiply_accumulate(Om[d], Sm[j], Vm, Om[d]);
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  for (uint d = 0; d < HD / 8; d++) {
    Om[d].thread_elements() /= l;
    simdgroup_store(Om[d], Os[sid], HD, ulong2(d * 8, 0));
  }
  simdgroup_barrier(mem_flags::mem_threadgroup);
  for (uint e = lane; e < 8 * HD; e += 32) {
    uint r = q0 + e / HD;
    if (r < p.L) O[(head * p.L + r) * HD + e % HD] = Os[sid][e];
  }
  // lanes with col == 0 hold a distinct row each: one writer per row
  if (col == 0 && row < p.L) LSE[head * p.L + row] = (m + log2(l)) / M_LOG2E_F;
}
