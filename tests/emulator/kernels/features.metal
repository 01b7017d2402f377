// Source features the emulator must accept: project includes, macros from compile(defines=...),
// function constants (also gating a buffer), macro-generated kernels, kernel templates instantiated
// with [[host_name]] in both styles, the [[kernel]] attribute, half literals.
#include <metal_stdlib>
#include "helpers.h"
using namespace metal;

constant bool HAS_BIAS [[function_constant(0)]];
constant float SCALE [[function_constant(1)]];
constant int UNSET [[function_constant(2)]];
constant half HALF_SCALE [[function_constant(3)]];
constant bool UNSET_DEFINED = is_function_constant_defined(UNSET);

kernel void affine(device const float* x [[buffer(0)]],
                   device const float* bias [[buffer(1), function_constant(HAS_BIAS)]],
                   device float* out [[buffer(2)]],
                   uint i [[thread_position_in_grid]]) {
  float v = x[i] * SCALE * float(HALF_SCALE);
  if (HAS_BIAS) v += bias[i];
  out[i] = square(v) + OFFSET + (UNSET_DEFINED ? 1000.0f : 0.0f);
}

#define DEFINE_FILL(NAME, T) \
  kernel void fill_##NAME(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]]) { out[i] = T(i) + 1.5h; }
DEFINE_FILL(f32, float)
DEFINE_FILL(f16, half)

template <typename T, int N>
kernel void constant_fill(device T* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  threadgroup T staged[N + 1][2];
  staged[N][0] = T(N);
  out[i] = staged[N][0];
}
template [[host_name("constant_fill_float_3")]] [[kernel]] decltype(constant_fill<float, 3>) constant_fill<float, 3>;
template [[host_name("constant_fill_int_5")]] kernel void constant_fill<int, 5>(device int*, uint);

// Names a kernel source may well use for itself must not clash with the emulator's shim.
constant float scalar = 2.0f;
inline float map(float x) { return x * scalar; }
struct component {
  float value;
};

[[kernel, max_total_threads_per_threadgroup(64)]] void attribute_style(device float* out [[buffer(0)]],
                                                                      uint i [[thread_position_in_grid]]) {
  component c{1.0f};
  out[i] = map(7.0f) / scalar + c.value;
}
