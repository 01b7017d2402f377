// Small kernels exercising one group of MSL builtins each; tests/emulator/test_builtins.py compares
// their outputs with values computed in Python from the documented semantics.
#include <metal_stdlib>
using namespace metal;

// ---- simdgroup_matrix ---------------------------------------------------------------------------

// Each lane reports the two elements it holds of the 8x8 matrix src[i] = i.
kernel void matrix_layout(device const float* src [[buffer(0)]],
                          device float* out [[buffer(1)]],
                          ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 m;
  simdgroup_load(m, src, 8);
  out[lane * 2] = m.thread_elements()[0];
  out[lane * 2 + 1] = m.thread_elements()[1];
}

struct LoadStore {
  uint4 load;   // origin x, origin y, transpose, elements per row
  uint4 store;  // the same for the store
};

// dst (threadgroup-staged) = store(load(src)) with the given origins and transposes.
kernel void matrix_load_store(device const float* src [[buffer(0)]],
                              device float* dst [[buffer(1)]],
                              constant LoadStore& p [[buffer(2)]],
                              ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float staged[16 * 16];
  for (uint i = lane; i < 256; i += 32) staged[i] = src[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 m;
  simdgroup_load(m, staged, p.load.w, ulong2(p.load.x, p.load.y), p.load.z != 0);
  simdgroup_store(m, dst, p.store.w, ulong2(p.store.x, p.store.y), p.store.z != 0);
}

// d = a * b + c, all 8x8 row-major matrices of T.
template <typename T>
kernel void matrix_mma(device const T* a [[buffer(0)]],
                       device const T* b [[buffer(1)]],
                       device const T* c [[buffer(2)]],
                       device T* d [[buffer(3)]]) {
  simdgroup_matrix<T, 8, 8> ma, mb, mc, md;
  simdgroup_load(ma, a);
  simdgroup_load(mb, b);
  simdgroup_load(mc, c);
  simdgroup_multiply_accumulate(md, ma, mb, mc);
  simdgroup_store(md, d);
}
template [[host_name("matrix_mma_float")]] kernel void matrix_mma<float>(device const float*, device const float*,
                                                                         device const float*, device float*);
template [[host_name("matrix_mma_half")]] kernel void matrix_mma<half>(device const half*, device const half*,
                                                                       device const half*, device half*);
template [[host_name("matrix_mma_bfloat")]] kernel void matrix_mma<bfloat>(device const bfloat*, device const bfloat*,
                                                                           device const bfloat*, device bfloat*);

// simdgroup_multiply with a diagonal matrix (the explicit constructor) scales rows.
kernel void matrix_diagonal(device const float* a [[buffer(0)]], device float* d [[buffer(1)]]) {
  simdgroup_float8x8 ma, md, two(2.0f);
  simdgroup_load(ma, a);
  simdgroup_multiply(md, two, ma);
  simdgroup_store(md, d);
}

// ---- SIMD-group shuffles -------------------------------------------------------------------------

// out[variant * 32 + lane] for x = 100 + lane and filling data 200 + lane.
kernel void shuffles(device int* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  int x = 100 + lane, fill = 200 + lane;
  int results[] = {
      simd_shuffle(x, ushort((lane * 7) % 32)),
      simd_shuffle_xor(x, ushort(5)),
      simd_shuffle_up(x, ushort(3)),
      simd_shuffle_down(x, ushort(3)),
      simd_shuffle_rotate_up(x, ushort(3)),
      simd_shuffle_rotate_down(x, ushort(3)),
      simd_broadcast(x, ushort(7)),
      simd_broadcast_first(x),
      simd_shuffle_and_fill_up(x, fill, ushort(3)),
      simd_shuffle_and_fill_down(x, fill, ushort(3)),
      simd_shuffle_and_fill_up(x, fill, ushort(2), ushort(8)),
      simd_shuffle_and_fill_down(x, fill, ushort(2), ushort(8)),
  };
  for (uint v = 0; v < sizeof(results) / sizeof(int); v++) out[v * 32 + lane] = results[v];
}

// Vector payloads travel whole.
kernel void shuffle_vectors(device float4* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  float4 v = float4(lane, lane * 2, -float(lane), 0.5f);
  out[lane] = simd_shuffle_xor(v, ushort(31));
}

// ---- reductions, scans and votes over active lanes ---------------------------------------------------

// out[k * 64 + tid]; dispatched with 40 threads (SIMD-group 1 has 8 lanes) and lanes with
// lane % 5 == 4 returned (inactive).
kernel void reductions(device int* out [[buffer(0)]],
                       device uint* votes [[buffer(1)]],
                       ushort lane [[thread_index_in_simdgroup]],
                       ushort tid [[thread_index_in_threadgroup]]) {
  if (lane % 5 == 4) return;
  int x = lane + 1;
  int y = lane % 3 + 1;
  int results[] = {
      simd_sum(x), simd_product(y), simd_min(x), simd_max(x), simd_and(x), simd_or(x), simd_xor(x),
      simd_prefix_inclusive_sum(x), simd_prefix_exclusive_sum(x),
      simd_prefix_inclusive_product(y), simd_prefix_exclusive_product(y),
      simd_all(x > 0), simd_all(x > 1), simd_any(x == 3), simd_any(x > 99), simd_is_first(),
  };
  for (uint k = 0; k < sizeof(results) / sizeof(int); k++) out[k * 64 + tid] = results[k];
  votes[tid * 2] = uint(simd_vote::vote_t(simd_ballot(lane % 2 == 0)));
  votes[tid * 2 + 1] = uint(simd_vote::vote_t(simd_active_threads_mask()));
}

// Float reduction of a partial SIMD-group (the threadgroup has 20 threads).
kernel void float_sum(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                      ushort tid [[thread_index_in_threadgroup]]) {
  out[tid] = simd_sum(x[tid]);
}

// ---- quad-groups ------------------------------------------------------------------------------------

kernel void quads(device int* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
  int x = 10 + lane;
  ushort q = lane % 4;
  int results[] = {
      quad_shuffle(x, ushort(3 - q)), quad_shuffle_xor(x, ushort(1)), quad_shuffle_up(x, ushort(1)),
      quad_shuffle_down(x, ushort(1)), quad_shuffle_rotate_up(x, ushort(1)), quad_shuffle_rotate_down(x, ushort(1)),
      quad_broadcast(x, ushort(2)), quad_sum(x), quad_min(x), quad_prefix_exclusive_sum(x),
      quad_shuffle_and_fill_up(x, -x, ushort(1)), int(quad_vote::vote_t(quad_ballot(q != 1))), quad_all(x > 0),
      quad_is_first(),
  };
  for (uint k = 0; k < sizeof(results) / sizeof(int); k++) out[k * 32 + lane] = results[k];
}

// ---- vectors ------------------------------------------------------------------------------------------

kernel void swizzles(device float* out [[buffer(0)]], device int* iout [[buffer(1)]]) {
  float4 v = float4(1.0f, 2.0f, 3.0f, 4.0f);
  v.xz = float2(10.0f, 30.0f);       // (10, 2, 30, 4)
  v.wy += 1.0f;                      // (10, 3, 30, 5)
  v.rgb = v.bgr;                     // (30, 3, 10, 5): read before write
  float3 t = v.zyx * 2.0f;           // (20, 6, 60)
  float2 u = float2(t.z, v.w) + v.xy;  // (90, 8)
  half4 h = half4(half2(1.5h, 2.0h), half(3.0h), 4.0h);
  h.yw = h.xx;                       // (1.5, 1.5, 3, 1.5)
  float4 out_v = float4(u, t.xy);
  for (int i = 0; i < 4; i++) out[i] = v[i];
  for (int i = 0; i < 4; i++) out[4 + i] = out_v[i];
  for (int i = 0; i < 4; i++) out[8 + i] = float(h[i]);
  int3 a = int3(7, -3, 12);
  int3 b = a.zxy % 5;                // (2, 2, -3)
  bool3 c = a > int3(0);
  iout[0] = b.x; iout[1] = b.y; iout[2] = b.z;
  iout[3] = c.x; iout[4] = c.y; iout[5] = all(c); iout[6] = any(c);
  uint2 s = uint2(1u, 3u) << 4u;
  iout[7] = int(s.x + s.y);
  float4 sel = select(float4(1.0f), float4(2.0f), bool4(true, false, true, false));
  out[12] = sel.x + 10.0f * sel.y + 100.0f * sel.z + 1000.0f * sel.w;
}

// sizeof / alignof of MSL types, in this order (see test_builtins.py).
kernel void type_sizes(device uint* out [[buffer(0)]]) {
  uint sizes[] = {
      sizeof(float2), alignof(float2), sizeof(float3), alignof(float3), sizeof(float4), alignof(float4),
      sizeof(packed_float3), alignof(packed_float3), sizeof(half3), alignof(half3), sizeof(half4),
      sizeof(bfloat4), sizeof(bool2), sizeof(bool3), sizeof(uchar3), sizeof(short3), sizeof(int3),
      sizeof(long2), sizeof(packed_half3), sizeof(ushort4),
  };
  for (uint i = 0; i < sizeof(sizes) / sizeof(uint); i++) out[i] = sizes[i];
}

// float3 arrays have a 16-byte stride, packed_float3 arrays 12.
kernel void vector_strides(device const float3* a [[buffer(0)]],
                           device const packed_float3* p [[buffer(1)]],
                           device float* out [[buffer(2)]]) {
  out[0] = a[1].x;
  out[1] = p[1].x;
  float3 unpacked = p[2];
  out[2] = unpacked.z;
}

// ---- half and bfloat --------------------------------------------------------------------------------

kernel void half_rounding(device float* out [[buffer(0)]]) {
  half big = 2048.0h, one = 1.0h;
  out[0] = float(big + one - big);   // 2049 is not a half: rounds (to even) to 2048
  float fbig = 2048.0f;
  out[1] = fbig + 1.0f - fbig;
  half third = 1.0h / 3.0h;
  out[2] = float(third);
  out[3] = float(half(65504.0f) * 2.0h);  // overflows to infinity
}

// Element-wise d = a * b + c computed in T (each operation rounded to T), and float -> T conversion.
template <typename T>
kernel void narrow_arithmetic(device const float* a [[buffer(0)]],
                              device const float* b [[buffer(1)]],
                              device const float* c [[buffer(2)]],
                              device T* d [[buffer(3)]],
                              device T* converted [[buffer(4)]],
                              uint i [[thread_position_in_grid]]) {
  T x = T(a[i]), y = T(b[i]), z = T(c[i]);
  T product = x * y;
  d[i] = product + z;
  converted[i] = T(a[i]);
}
template [[host_name("half_arithmetic")]] kernel void narrow_arithmetic<half>(device const float*, device const float*,
                                                                              device const float*, device half*,
                                                                              device half*, uint);
template [[host_name("bfloat_arithmetic")]] kernel void narrow_arithmetic<bfloat>(device const float*, device const float*,
                                                                                  device const float*, device bfloat*,
                                                                                  device bfloat*, uint);

// ---- math ------------------------------------------------------------------------------------------------

// out[k * n + i] = f_k(x[i]) for float, and one half version.
kernel void math_float(device const float* x [[buffer(0)]],
                       device float* out [[buffer(1)]],
                       device half* hout [[buffer(2)]],
                       uint i [[thread_position_in_grid]],
                       uint n [[threads_per_grid]]) {
  float v = x[i];
  float results[] = {
      exp(v), exp2(v), log(abs(v) + 1.0f), log2(abs(v) + 1.0f), tanh(v), sqrt(abs(v)), rsqrt(abs(v) + 1.0f),
      fast::exp(v), precise::exp(v), abs(v), fma(v, v, 1.0f), clamp(v, -1.0f, 1.0f), mix(v, 2.0f, 0.25f),
      sign(v), fract(v), max(v, 0.5f), min(v, 0.5f), float(isnan(v / 0.0f)), float(isinf(v / 0.0f)),
      fast::divide(v, 3.0f), precise::rsqrt(abs(v) + 1.0f), floor(v), ceil(v), step(0.0f, v), saturate(v),
  };
  for (uint k = 0; k < sizeof(results) / sizeof(float); k++) out[k * n + i] = results[k];
  hout[i] = exp(half(v));
}

kernel void math_vectors(device const float4* x [[buffer(0)]], device float4* out [[buffer(1)]],
                         uint i [[thread_position_in_grid]]) {
  float4 v = x[i];
  out[3 * i] = exp(v) + max(v, float4(0.0f));
  out[3 * i + 1] = float4(dot(v, v), length(v.xy), clamp(v.z, 0.0f, 1.0f), select(1.0f, 2.0f, v.w > 0.0f));
  out[3 * i + 2] = mix(v, float4(1.0f), float4(0.5f)) + abs(v);
}

// ---- integer helpers and as_type ---------------------------------------------------------------------------

kernel void integers(device const uint* x [[buffer(0)]],
                     device uint* out [[buffer(1)]],
                     uint i [[thread_position_in_grid]],
                     uint n [[threads_per_grid]]) {
  uint u = x[i];
  int s = int(u);
  uint results[] = {
      clz(u), ctz(u), popcount(u), mulhi(u, 0x9E3779B9u), uint(mulhi(s, -7)), absdiff(s, 5),
      addsat(u, 0xF0000000u), subsat(u, 1000u), uint(addsat(s, 0x7FFFFFF0)), rotate(u, 7u), reverse_bits(u),
      extract_bits(u, 4u, 8u), uint(extract_bits(s, 28u, 4u)), insert_bits(u, 0xABu, 8u, 8u),
      uint(max(s, -5)), min(u, 100u), uint(abs(s)), uint(clamp(s, -10, 10)),
  };
  for (uint k = 0; k < sizeof(results) / sizeof(uint); k++) out[k * n + i] = results[k];
}

kernel void as_types(device uint* out [[buffer(0)]]) {
  out[0] = as_type<uint>(1.0f);
  out[1] = as_type<uint>(half2(1.0h, -2.0h));
  float f = as_type<float>(0x40490fdbu);
  out[2] = uint(f * 1000000.0f);
  out[3] = as_type<ushort2>(0x12345678u).y;
  out[4] = uint(as_type<bfloat2>(0x3f80c000u).x == bfloat(-2.0f));  // x is the low half
}

// ---- atomics ---------------------------------------------------------------------------------------------------

// Every thread of every threadgroup adds to the same device counters; each thread also draws a
// unique slot from a threadgroup counter.
kernel void atomics(device atomic_uint* counter [[buffer(0)]],
                    device atomic_float* total [[buffer(1)]],
                    device atomic_int* largest [[buffer(2)]],
                    device uint* slots [[buffer(3)]],
                    uint gid [[thread_position_in_grid]],
                    uint group [[threadgroup_position_in_grid]],
                    uint size [[threads_per_threadgroup]]) {
  threadgroup atomic_uint next;
  if (gid % size == 0) atomic_store_explicit(&next, 0u, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
  atomic_fetch_add_explicit(total, 0.5f, memory_order_relaxed);
  atomic_fetch_max_explicit(largest, int(gid), memory_order_relaxed);
  uint slot = atomic_fetch_add_explicit(&next, 1u, memory_order_relaxed);
  slots[group * size + slot] = gid;
}

// Compare-and-swap loop: a float maximum built from atomic_compare_exchange_weak_explicit.
kernel void atomic_cas(device atomic_uint* bits [[buffer(0)]], device const float* x [[buffer(1)]],
                       uint gid [[thread_position_in_grid]]) {
  uint expected = atomic_load_explicit(bits, memory_order_relaxed);
  while (as_type<float>(expected) < x[gid] &&
         !atomic_compare_exchange_weak_explicit(bits, &expected, as_type<uint>(x[gid]), memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

// ---- type traits and limits ------------------------------------------------------------------------------

kernel void limits_and_traits(device float* out [[buffer(0)]]) {
  out[0] = float(numeric_limits<half>::max());
  out[1] = float(numeric_limits<half>::epsilon());
  out[2] = float(numeric_limits<bfloat>::max());
  out[3] = float(numeric_limits<bfloat>::epsilon());
  out[4] = float(is_floating_point_v<half> && is_floating_point_v<bfloat> && !is_floating_point_v<int>);
  out[5] = float(max3(1, 5, 3));
  out[6] = median3(1.0f, 5.0f, 3.0f);
  out[7] = numeric_limits<float>::infinity();
  out[8] = float(isinf(numeric_limits<half>::infinity()) && isnan(numeric_limits<bfloat>::quiet_NaN()));
}
