"""Second reader's tests of the emulator's MSL builtins, from the documented semantics.

Written from Apple's Metal Shading Language specification and the project's facts file
(shared facts/metal.md), independently of the emulator's implementation: each test runs a tiny
kernel through the public API (mfa_torch.emulator.compile / dispatch) and compares with values
computed here in Python. Kernels are grouped into a few libraries, each compiled once per module.
"""

import ctypes
import math
import random
import struct

import pytest
import torch

pytestmark = pytest.mark.emulator

from mfa_torch import emulator  # noqa: E402  (the public API under test)

_LIBS = {}


def lib(name):
    """Compile one of the sources below once per test session (a failure stays attached to the
    tests of that group only)."""
    if name not in _LIBS:
        try:
            _LIBS[name] = emulator.compile(SOURCES[name])
        except Exception as e:  # keep the compile error for every test of the group
            _LIBS[name] = e
    got = _LIBS[name]
    if isinstance(got, Exception):
        raise got
    return got


def zeros(n, dtype=torch.float32):
    return torch.zeros(n, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# simdgroup_matrix

SG_MATRIX = r"""
#include <metal_stdlib>
using namespace metal;

// Each lane reports the two elements it holds of a matrix loaded from src[i] = i.
kernel void sg_layout_read(device const float* src [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 m;
  simdgroup_load(m, src, 8);
  out[lane * 2 + 0] = m.thread_elements()[0];
  out[lane * 2 + 1] = m.thread_elements()[1];
}

// Each lane writes (lane*2, lane*2+1) into its elements; the store shows where they sit.
kernel void sg_layout_write(device float* out [[buffer(0)]],
                            ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(-1.0f);
  m.thread_elements()[0] = float(lane * 2);
  m.thread_elements()[1] = float(lane * 2 + 1);
  simdgroup_store(m, out, 8);
}

// Load an 8x8 block of a 16x16 source at an origin (x = column, y = row), and transposed from the
// block's own address with origin 0 (Metal leaves an origin with a transpose unspecified), then
// store both plainly.
kernel void sg_load_origin(device const float* src [[buffer(0)]],
                           device float* plain [[buffer(1)]],
                           device float* transposed [[buffer(2)]],
                           device float* tg_plain [[buffer(3)]],
                           device float* tg_transposed [[buffer(4)]],
                           ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a, b;
  simdgroup_load(a, src, 16, ulong2(3, 5));
  simdgroup_load(b, src + 5 * 16 + 3, 16, ulong2(0, 0), true);
  simdgroup_store(a, plain, 8);
  simdgroup_store(b, transposed, 8);
  threadgroup float tile[256];
  for (ushort i = lane; i < 256; i += 32) tile[i] = src[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 c, d;
  simdgroup_load(c, tile, 16, ulong2(3, 5));
  simdgroup_load(d, tile + 5 * 16 + 3, 16, ulong2(0, 0), true);
  simdgroup_store(c, tg_plain, 8);
  simdgroup_store(d, tg_transposed, 8);
}

// Store a plainly loaded 8x8 matrix into a 16x16 destination at an origin, and transposed at the
// block's own address with origin 0, in device and in threadgroup memory.
kernel void sg_store_origin(device const float* src [[buffer(0)]],
                            device float* plain [[buffer(1)]],
                            device float* transposed [[buffer(2)]],
                            device float* tg_plain [[buffer(3)]],
                            device float* tg_transposed [[buffer(4)]],
                            ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 m;
  simdgroup_load(m, src, 8);
  simdgroup_store(m, plain, 16, ulong2(2, 6));
  simdgroup_store(m, transposed + 6 * 16 + 2, 16, ulong2(0, 0), true);
  threadgroup float t1[256];
  threadgroup float t2[256];
  for (ushort i = lane; i < 256; i += 32) { t1[i] = 0.0f; t2[i] = 0.0f; }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_store(m, t1, 16, ulong2(2, 6));
  simdgroup_store(m, t2 + 6 * 16 + 2, 16, ulong2(0, 0), true);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (ushort i = lane; i < 256; i += 32) { tg_plain[i] = t1[i]; tg_transposed[i] = t2[i]; }
}

template <typename T>
kernel void sg_mma(device const T* A [[buffer(0)]],
                   device const T* B [[buffer(1)]],
                   device const T* C [[buffer(2)]],
                   device T* D [[buffer(3)]],
                   device T* P [[buffer(4)]]) {
  simdgroup_matrix<T, 8, 8> a, b, c, d, p;
  simdgroup_load(a, A, 8);
  simdgroup_load(b, B, 8);
  simdgroup_load(c, C, 8);
  simdgroup_multiply_accumulate(d, a, b, c);
  simdgroup_multiply(p, a, b);
  simdgroup_store(d, D, 8);
  simdgroup_store(p, P, 8);
}
template [[host_name("sg_mma_float")]] kernel void sg_mma<float>(
    device const float*, device const float*, device const float*, device float*, device float*);
template [[host_name("sg_mma_half")]] kernel void sg_mma<half>(
    device const half*, device const half*, device const half*, device half*, device half*);
template [[host_name("sg_mma_bfloat")]] kernel void sg_mma<bfloat>(
    device const bfloat*, device const bfloat*, device const bfloat*, device bfloat*,
    device bfloat*);

// Mixed precision as attention kernels use it: half inputs, float accumulator.
kernel void sg_mma_mixed(device const half* A [[buffer(0)]],
                         device const half* B [[buffer(1)]],
                         device float* D [[buffer(2)]]) {
  simdgroup_half8x8 a, b;
  simdgroup_load(a, A, 8);
  simdgroup_load(b, B, 8);
  simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.5f);
  simdgroup_multiply_accumulate(acc, a, b, acc);
  simdgroup_store(acc, D, 8);
}
"""


def layout(lane):
    r = ((lane >> 4) & 1) * 4 + ((lane >> 1) & 3)
    c = ((lane >> 3) & 1) * 4 + (lane & 1) * 2
    return r, c


def test_simdgroup_matrix_lane_layout_thread_elements_read():
    src = torch.arange(64, dtype=torch.float32)
    out = zeros(64)
    lib("sg").dispatch("sg_layout_read", {0: src, 1: out}, (1,), (32,))
    expected = []
    for lane in range(32):
        r, c = layout(lane)
        expected += [r * 8 + c, r * 8 + c + 1]
    assert out.tolist() == expected


def test_simdgroup_matrix_lane_layout_thread_elements_write():
    out = zeros(64)
    lib("sg").dispatch("sg_layout_write", {0: out}, (1,), (32,))
    expected = [None] * 64
    for lane in range(32):
        r, c = layout(lane)
        expected[r * 8 + c] = lane * 2
        expected[r * 8 + c + 1] = lane * 2 + 1
    assert None not in expected  # the layout covers each element exactly once
    assert out.tolist() == expected


def test_simdgroup_load_origin_and_transpose_device_and_threadgroup():
    src = torch.arange(256, dtype=torch.float32)
    bufs = {0: src, 1: zeros(64), 2: zeros(64), 3: zeros(64), 4: zeros(64)}
    lib("sg").dispatch("sg_load_origin", bufs, (1,), (32,))
    ox, oy, epr = 3, 5, 16
    plain = [src[(oy + r) * epr + ox + c].item() for r in range(8) for c in range(8)]
    trans = [src[(oy + c) * epr + ox + r].item() for r in range(8) for c in range(8)]  # from the block's address
    assert bufs[1].tolist() == plain
    assert bufs[2].tolist() == trans
    assert bufs[3].tolist() == plain, "threadgroup source"
    assert bufs[4].tolist() == trans, "threadgroup source, transposed"


def test_simdgroup_store_origin_and_transpose_device_and_threadgroup():
    src = torch.arange(64, dtype=torch.float32) + 1
    bufs = {0: src, 1: zeros(256), 2: zeros(256), 3: zeros(256), 4: zeros(256)}
    lib("sg").dispatch("sg_store_origin", bufs, (1,), (32,))
    ox, oy, epr = 2, 6, 16
    plain, trans = [0.0] * 256, [0.0] * 256
    for r in range(8):
        for c in range(8):
            plain[(oy + r) * epr + ox + c] = src[r * 8 + c].item()
            trans[(oy + c) * epr + ox + r] = src[r * 8 + c].item()  # at the block's address
    assert bufs[1].tolist() == plain
    assert bufs[2].tolist() == trans
    assert bufs[3].tolist() == plain, "threadgroup destination"
    assert bufs[4].tolist() == trans, "threadgroup destination, transposed"


MMA_TYPES = {"float": (torch.float32, 1e-5), "half": (torch.float16, 1.2e-2),
             "bfloat": (torch.bfloat16, 8e-2)}


@pytest.mark.parametrize("tname", list(MMA_TYPES))
def test_simdgroup_multiply_accumulate_exact_small_values(tname):
    # Multiples of 1/4 in [-1, 1]: every product and partial sum is exact in all three types,
    # so the result must be exact whatever the accumulation order.
    dtype, _ = MMA_TYPES[tname]
    g = torch.Generator().manual_seed(1)
    A, B, C = ((torch.randint(-4, 5, (64,), generator=g).double() / 4) for _ in range(3))
    D, P = zeros(64, dtype), zeros(64, dtype)
    lib("sg").dispatch(f"sg_mma_{tname}", {0: A.to(dtype), 1: B.to(dtype), 2: C.to(dtype),
                                            3: D, 4: P}, (1,), (32,))
    ref_p = A.view(8, 8) @ B.view(8, 8)
    assert D.double().view(8, 8).tolist() == (ref_p + C.view(8, 8)).tolist()
    assert P.double().view(8, 8).tolist() == ref_p.tolist()


@pytest.mark.parametrize("tname", list(MMA_TYPES))
def test_simdgroup_multiply_accumulate_random_vs_fp64(tname):
    dtype, tol = MMA_TYPES[tname]
    g = torch.Generator().manual_seed(2)
    A, B, C = (torch.randn(64, generator=g).to(dtype) for _ in range(3))
    D, P = zeros(64, dtype), zeros(64, dtype)
    lib("sg").dispatch(f"sg_mma_{tname}", {0: A, 1: B, 2: C, 3: D, 4: P}, (1,), (32,))
    ref = A.double().view(8, 8) @ B.double().view(8, 8) + C.double().view(8, 8)
    scale = (A.double().abs().view(8, 8) @ B.double().abs().view(8, 8)
             + C.double().abs().view(8, 8))
    err = (D.double().view(8, 8) - ref).abs()
    assert (err <= tol * scale + 1e-30).all(), f"max error {err.max().item()} ({tname})"
    err_p = (P.double().view(8, 8) - A.double().view(8, 8) @ B.double().view(8, 8)).abs()
    assert (err_p <= tol * scale).all()


def test_simdgroup_multiply_accumulate_half_inputs_float_accumulator():
    g = torch.Generator().manual_seed(3)
    A, B = (torch.randn(64, generator=g).half() for _ in range(2))
    D = zeros(64)
    lib("sg").dispatch("sg_mma_mixed", {0: A, 1: B, 2: D}, (1,), (32,))
    ref = A.double().view(8, 8) @ B.double().view(8, 8) + 0.5
    assert torch.allclose(D.double().view(8, 8), ref, rtol=1e-5, atol=1e-5)


SG_EXTRAS = r"""
#include <metal_stdlib>
using namespace metal;
// simdgroup_matrix<T,8,8>(T dval) is a diagonal matrix (MSL spec); elements_per_row defaults to 8.
kernel void sg_diagonal(device const float* src [[buffer(0)]],
                        device float* diag [[buffer(1)]],
                        device float* scaled [[buffer(2)]]) {
  simdgroup_float8x8 d = simdgroup_float8x8(2.0f);
  simdgroup_store(d, diag);
  simdgroup_float8x8 m;
  simdgroup_load(m, src);
  simdgroup_float8x8 r;
  simdgroup_multiply(r, m, d);
  simdgroup_store(r, scaled);
}
"""


def test_simdgroup_matrix_diagonal_constructor_and_default_arguments():
    src = torch.arange(64, dtype=torch.float32)
    diag, scaled = zeros(64), zeros(64)
    lib("sg_extras").dispatch("sg_diagonal", {0: src, 1: diag, 2: scaled}, (1,), (32,))
    assert diag.view(8, 8).tolist() == (2 * torch.eye(8)).tolist()
    assert scaled.tolist() == (2 * src).tolist()


# ---------------------------------------------------------------------------------------------
# SIMD-group shuffles, reductions, scans, votes; quad-group functions

SIMD = r"""
#include <metal_stdlib>
using namespace metal;

kernel void shuffles(device const float* x [[buffer(0)]],
                     device const float* fill [[buffer(1)]],
                     device float* out [[buffer(2)]],
                     uint tid [[thread_position_in_grid]],
                     uint tptg [[threads_per_threadgroup]],
                     uint ntg [[threadgroups_per_grid]],
                     ushort lane [[thread_index_in_simdgroup]]) {
  const uint n = tptg * ntg;  // threads in the (uniform) grid
  float v = x[tid];
  float f = fill[tid];
  out[0 * n + tid] = simd_shuffle(v, ushort((lane * 7 + 3) % 32));
  out[1 * n + tid] = simd_shuffle_up(v, 3);
  out[2 * n + tid] = simd_shuffle_down(v, 5);
  out[3 * n + tid] = simd_shuffle_rotate_up(v, 3);
  out[4 * n + tid] = simd_shuffle_rotate_down(v, 5);
  out[5 * n + tid] = simd_shuffle_xor(v, 9);
  out[6 * n + tid] = simd_broadcast(v, 17);
  out[7 * n + tid] = simd_broadcast_first(v);
  out[8 * n + tid] = simd_shuffle_and_fill_up(v, f, 3);
  out[9 * n + tid] = simd_shuffle_and_fill_up(v, f, 2, 8);
  out[10 * n + tid] = simd_shuffle_and_fill_down(v, f, 3);
  out[11 * n + tid] = simd_shuffle_and_fill_down(v, f, 2, 8);
  out[12 * n + tid] = simd_shuffle_and_fill_up(v, f, 1, 4);
  out[13 * n + tid] = simd_shuffle_and_fill_down(v, f, 3, 16);
  out[14 * n + tid] = simd_shuffle_up(v, 31);
  out[15 * n + tid] = simd_shuffle_rotate_down(v, 31);
}

// Vector and integer payloads go through the same shuffles.
kernel void shuffles_typed(device const int* x [[buffer(0)]],
                           device int* out_int [[buffer(1)]],
                           device float4* out_vec [[buffer(2)]],
                           device half* out_half [[buffer(3)]],
                           uint tid [[thread_position_in_grid]]) {
  int v = x[tid];
  out_int[tid] = simd_shuffle_xor(v, 16);
  float4 w = float4(float(v), -float(v), 0.5f * float(v), 7.0f);
  out_vec[tid] = simd_shuffle_down(w, 1);
  out_half[tid] = simd_shuffle_rotate_up(half(v), 1);
}

// Reductions and scans over the active lanes (the last SIMD-group may be partial).
kernel void reductions(device const float* x [[buffer(0)]],
                       device const float* p [[buffer(1)]],
                       device const uint* u [[buffer(2)]],
                       device const int* s [[buffer(3)]],
                       device float* fout [[buffer(4)]],
                       device uint* uout [[buffer(5)]],
                       device int* iout [[buffer(6)]],
                       uint tid [[thread_position_in_grid]],
                       uint tptg [[threads_per_threadgroup]],
                       uint ntg [[threadgroups_per_grid]]) {
  const uint n = tptg * ntg;  // threads in the (uniform) grid
  float v = x[tid];
  float q = p[tid];
  fout[0 * n + tid] = simd_sum(v);
  fout[1 * n + tid] = simd_product(q);
  fout[2 * n + tid] = simd_min(v);
  fout[3 * n + tid] = simd_max(v);
  fout[4 * n + tid] = simd_prefix_inclusive_sum(v);
  fout[5 * n + tid] = simd_prefix_exclusive_sum(v);
  fout[6 * n + tid] = simd_prefix_inclusive_product(q);
  fout[7 * n + tid] = simd_prefix_exclusive_product(q);
  uint w = u[tid];
  uout[0 * n + tid] = simd_and(w);
  uout[1 * n + tid] = simd_or(w);
  uout[2 * n + tid] = simd_xor(w);
  uout[3 * n + tid] = simd_sum(w);
  uout[4 * n + tid] = simd_max(w);
  int t = s[tid];
  iout[0 * n + tid] = simd_sum(t);
  iout[1 * n + tid] = simd_min(t);
  iout[2 * n + tid] = simd_prefix_exclusive_sum(t);
  iout[3 * n + tid] = simd_prefix_inclusive_product(t);
}

kernel void votes(device const float* x [[buffer(0)]],
                  device ulong* ballots [[buffer(1)]],
                  device uint* flags [[buffer(2)]],
                  uint tid [[thread_position_in_grid]],
                  uint tptg [[threads_per_threadgroup]],
                  uint ntg [[threadgroups_per_grid]],
                  ushort lane [[thread_index_in_simdgroup]]) {
  const uint n = tptg * ntg;  // threads in the (uniform) grid
  float v = x[tid];
  ballots[0 * n + tid] = static_cast<ulong>(simd_ballot(v > 0.0f));
  ballots[1 * n + tid] = static_cast<ulong>(simd_active_threads_mask());
  ballots[2 * n + tid] = static_cast<ulong>(simd_ballot(lane % 3 == 0));
  flags[0 * n + tid] = simd_all(v > 0.0f) ? 1u : 0u;
  flags[1 * n + tid] = simd_any(v > 100.0f) ? 1u : 0u;
  flags[2 * n + tid] = simd_is_first() ? 1u : 0u;
  flags[3 * n + tid] = simd_all(v > -1000.0f) ? 1u : 0u;
  flags[4 * n + tid] = simd_any(v > 1000.0f) ? 1u : 0u;
}

kernel void quads(device const float* x [[buffer(0)]],
                  device const float* fill [[buffer(1)]],
                  device float* out [[buffer(2)]],
                  uint tid [[thread_position_in_grid]],
                  uint tptg [[threads_per_threadgroup]],
                  uint ntg [[threadgroups_per_grid]],
                  ushort lane [[thread_index_in_simdgroup]]) {
  const uint n = tptg * ntg;  // threads in the (uniform) grid
  float v = x[tid];
  float f = fill[tid];
  out[0 * n + tid] = quad_sum(v);
  out[1 * n + tid] = quad_min(v);
  out[2 * n + tid] = quad_max(v);
  out[3 * n + tid] = quad_prefix_inclusive_sum(v);
  out[4 * n + tid] = quad_prefix_exclusive_sum(v);
  out[5 * n + tid] = quad_shuffle(v, ushort((lane + 1) % 4));
  out[6 * n + tid] = quad_shuffle_up(v, 1);
  out[7 * n + tid] = quad_shuffle_down(v, 2);
  out[8 * n + tid] = quad_shuffle_rotate_up(v, 1);
  out[9 * n + tid] = quad_shuffle_rotate_down(v, 3);
  out[10 * n + tid] = quad_shuffle_xor(v, 2);
  out[11 * n + tid] = quad_broadcast(v, 2);
  out[12 * n + tid] = quad_shuffle_and_fill_up(v, f, 1, 2);
  out[13 * n + tid] = quad_shuffle_and_fill_down(v, f, 1, 2);
  out[14 * n + tid] = quad_shuffle_and_fill_down(v, f, 2);
  out[15 * n + tid] = quad_shuffle_and_fill_up(v, f, 3);
  out[16 * n + tid] = quad_all(v > 2.0f) ? 1.0f : 0.0f;
  out[17 * n + tid] = quad_any(v > 10.0f) ? 1.0f : 0.0f;
  out[18 * n + tid] = quad_product(v);
  out[19 * n + tid] = quad_broadcast_first(v);
}

// Quad reductions over the active lanes of a partial last quad (38 threads: lanes 36, 37).
kernel void quads_partial(device const float* x [[buffer(0)]],
                          device float* out [[buffer(1)]],
                          uint tid [[thread_position_in_grid]],
                          uint tptg [[threads_per_threadgroup]]) {
  float v = x[tid];
  out[0 * tptg + tid] = quad_sum(v);
  out[1 * tptg + tid] = quad_prefix_exclusive_sum(v);
  out[2 * tptg + tid] = quad_max(v);
  out[3 * tptg + tid] = quad_is_first() ? 1.0f : 0.0f;
}
"""


def groups(n, size):
    """Lists of the thread indices of each group of `size` (a last partial group included)."""
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def per_lane(n, width, fn):
    """out[t] = fn(group_members, position_in_group) for every thread t."""
    out = [None] * n
    for g in groups(n, width):
        for i, t in enumerate(g):
            out[t] = fn(g, i)
    return out


def fill_up(vals, fills, g, i, delta, modulo):
    base = (i // modulo) * modulo
    j = i - base
    return vals[g[base + j - delta]] if j >= delta else fills[g[base + modulo - delta + j]]


def fill_down(vals, fills, g, i, delta, modulo):
    base = (i // modulo) * modulo
    j = i - base
    return vals[g[base + j + delta]] if j + delta < modulo else fills[g[base + j + delta - modulo]]


def test_simd_shuffles_at_edge_lanes():
    n = 64  # two full SIMD-groups: lane = tid % 32
    x = torch.arange(n, dtype=torch.float32) + 100
    f = torch.arange(n, dtype=torch.float32) + 500
    out = zeros(16 * n)
    lib("simd").dispatch("shuffles", {0: x, 1: f, 2: out}, (1,), (n,))
    xs, fs = x.tolist(), f.tolist()
    exp = {
        "shuffle": per_lane(n, 32, lambda g, i: xs[g[(i * 7 + 3) % 32]]),
        "shuffle_up 3 (low lanes keep own)": per_lane(
            n, 32, lambda g, i: xs[g[i - 3]] if i >= 3 else xs[g[i]]),
        "shuffle_down 5 (high lanes keep own)": per_lane(
            n, 32, lambda g, i: xs[g[i + 5]] if i + 5 < 32 else xs[g[i]]),
        "rotate_up 3": per_lane(n, 32, lambda g, i: xs[g[(i - 3) % 32]]),
        "rotate_down 5": per_lane(n, 32, lambda g, i: xs[g[(i + 5) % 32]]),
        "xor 9": per_lane(n, 32, lambda g, i: xs[g[i ^ 9]]),
        "broadcast 17": per_lane(n, 32, lambda g, i: xs[g[17]]),
        "broadcast_first": per_lane(n, 32, lambda g, i: xs[g[0]]),
        "and_fill_up 3": per_lane(n, 32, lambda g, i: fill_up(xs, fs, g, i, 3, 32)),
        "and_fill_up 2 mod 8": per_lane(n, 32, lambda g, i: fill_up(xs, fs, g, i, 2, 8)),
        "and_fill_down 3": per_lane(n, 32, lambda g, i: fill_down(xs, fs, g, i, 3, 32)),
        "and_fill_down 2 mod 8": per_lane(n, 32, lambda g, i: fill_down(xs, fs, g, i, 2, 8)),
        "and_fill_up 1 mod 4": per_lane(n, 32, lambda g, i: fill_up(xs, fs, g, i, 1, 4)),
        "and_fill_down 3 mod 16": per_lane(n, 32, lambda g, i: fill_down(xs, fs, g, i, 3, 16)),
        "shuffle_up 31": per_lane(n, 32, lambda g, i: xs[g[0]] if i == 31 else xs[g[i]]),
        "rotate_down 31": per_lane(n, 32, lambda g, i: xs[g[(i + 31) % 32]]),
    }
    got = out.view(16, n).tolist()
    bad = [name for k, (name, e) in enumerate(exp.items()) if got[k] != e]
    assert not bad, "\n".join(f"{name}: got {got[list(exp).index(name)][:32]}\n  expected "
                              f"{exp[name][:32]}" for name in bad)


def test_spec_example_and_fill_up_modulo_8_delta_2():
    # The MSL specification's figure: data a..h, filling fa..fh per 8-lane vector gives
    # fg fh a b c d e f.
    n = 32
    x = torch.arange(n, dtype=torch.float32)
    f = -torch.arange(n, dtype=torch.float32) - 1
    out = zeros(16 * n)
    lib("simd").dispatch("shuffles", {0: x, 1: f, 2: out}, (1,), (n,))
    row = out.view(16, n)[9].tolist()
    assert row[:8] == [f[6].item(), f[7].item(), 0, 1, 2, 3, 4, 5]
    assert row[8:16] == [f[14].item(), f[15].item(), 8, 9, 10, 11, 12, 13]
    down = out.view(16, n)[11].tolist()  # c d e f g h fa fb
    assert down[:8] == [2, 3, 4, 5, 6, 7, f[0].item(), f[1].item()]


def test_simd_shuffles_of_int_vector_and_half_payloads():
    n = 32
    x = torch.arange(n, dtype=torch.int32) * 3 - 40
    out_i, out_v, out_h = zeros(n, torch.int32), zeros(4 * n), zeros(n, torch.float16)
    lib("simd").dispatch("shuffles_typed", {0: x, 1: out_i, 2: out_v, 3: out_h}, (1,), (n,))
    xs = x.tolist()
    assert out_i.tolist() == [xs[i ^ 16] for i in range(n)]
    src = [i + 1 if i + 1 < n else i for i in range(n)]
    exp_v = [[xs[s], -xs[s], 0.5 * xs[s], 7.0] for s in src]
    assert out_v.view(n, 4).tolist() == exp_v
    assert out_h.tolist() == [float(xs[(i - 1) % n]) for i in range(n)]


RED_N = 40  # threads per threadgroup: SIMD-group 0 full, SIMD-group 1 has 8 active lanes
RED_TG = 2


def red_inputs():
    n = RED_N * RED_TG
    rng = random.Random(5)
    x = [float(rng.randint(-50, 50)) for _ in range(n)]  # integer-valued: sums are exact
    p = [rng.choice([1.0, -1.0, 2.0, 0.5, -0.5]) for _ in range(n)]  # products exact
    u = [rng.getrandbits(32) for _ in range(n)]
    s = [rng.choice([1, -1, 2, -1, 1, -2, 1, 1]) for _ in range(n)]  # products stay < 2**31
    return x, p, u, s


def sgroups():
    """Thread lists of every SIMD-group, per threadgroup (the last one partial)."""
    return [[tg * RED_N + t for t in g] for tg in range(RED_TG) for g in groups(RED_N, 32)]


def expect(n, fn):
    out = [None] * n
    for g in sgroups():
        for i, t in enumerate(g):
            out[t] = fn(g, i)
    return out


def test_simd_reductions_and_scans_with_partial_simdgroup():
    n = RED_N * RED_TG
    x, p, u, s = red_inputs()
    fout, uout, iout = zeros(8 * n), zeros(5 * n, torch.int32), zeros(4 * n, torch.int32)
    u_i32 = torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in u], dtype=torch.int32)
    bufs = {0: torch.tensor(x), 1: torch.tensor(p), 2: u_i32,
            3: torch.tensor(s, dtype=torch.int32), 4: fout, 5: uout, 6: iout}
    lib("simd").dispatch("reductions", bufs, (RED_TG,), (RED_N,))
    prod = math.prod
    fexp = {
        "simd_sum": expect(n, lambda g, i: sum(x[t] for t in g)),
        "simd_product": expect(n, lambda g, i: prod(p[t] for t in g)),
        "simd_min": expect(n, lambda g, i: min(x[t] for t in g)),
        "simd_max": expect(n, lambda g, i: max(x[t] for t in g)),
        "prefix_inclusive_sum": expect(n, lambda g, i: sum(x[t] for t in g[:i + 1])),
        "prefix_exclusive_sum": expect(n, lambda g, i: sum(x[t] for t in g[:i])),
        "prefix_inclusive_product": expect(n, lambda g, i: prod(p[t] for t in g[:i + 1])),
        "prefix_exclusive_product": expect(n, lambda g, i: prod(p[t] for t in g[:i])),
    }
    got = fout.view(8, n).tolist()
    bad = [k for j, k in enumerate(fexp) if got[j] != fexp[k]]
    assert not bad, {k: (got[list(fexp).index(k)], fexp[k]) for k in bad}

    def fold(op, vals, init):
        r = init
        for v in vals:
            r = op(r, v)
        return r

    m32 = 0xFFFFFFFF
    uexp = {
        "simd_and": expect(n, lambda g, i: fold(lambda a, b: a & b, (u[t] for t in g), m32)),
        "simd_or": expect(n, lambda g, i: fold(lambda a, b: a | b, (u[t] for t in g), 0)),
        "simd_xor": expect(n, lambda g, i: fold(lambda a, b: a ^ b, (u[t] for t in g), 0)),
        "simd_sum(uint) wraps": expect(n, lambda g, i: sum(u[t] for t in g) & m32),
        "simd_max(uint)": expect(n, lambda g, i: max(u[t] for t in g)),
    }
    ugot = [[v & m32 for v in row] for row in uout.view(5, n).tolist()]
    bad = [k for j, k in enumerate(uexp) if ugot[j] != uexp[k]]
    assert not bad, bad
    iexp = {
        "simd_sum(int)": expect(n, lambda g, i: sum(s[t] for t in g)),
        "simd_min(int)": expect(n, lambda g, i: min(s[t] for t in g)),
        "prefix_exclusive_sum(int)": expect(n, lambda g, i: sum(s[t] for t in g[:i])),
        "prefix_inclusive_product(int)": expect(n, lambda g, i: prod(s[t] for t in g[:i + 1])),
    }
    igot = iout.view(4, n).tolist()
    bad = [k for j, k in enumerate(iexp) if igot[j] != iexp[k]]
    assert not bad, bad


def test_simd_votes_active_mask_and_is_first_with_partial_simdgroup():
    n = RED_N * RED_TG
    rng = random.Random(9)
    x = [float(rng.randint(-20, 20)) or 1.0 for _ in range(n)]
    x[RED_N + 33] = 500.0  # second threadgroup, partial SIMD-group: simd_any sees it
    for t in range(32, 40):
        x[t] = abs(x[t])  # first threadgroup's partial SIMD-group: all positive
    ballots, flags = zeros(3 * n, torch.int64), zeros(5 * n, torch.int32)
    lib("simd").dispatch("votes", {0: torch.tensor(x), 1: ballots, 2: flags},
                         (RED_TG,), (RED_N,))

    def bits(g, pred):
        return sum(1 << i for i, t in enumerate(g) if pred(t, i))

    exp_b = [
        expect(n, lambda g, i: bits(g, lambda t, j: x[t] > 0)),
        expect(n, lambda g, i: bits(g, lambda t, j: True)),  # 0xFFFFFFFF or 0xFF
        expect(n, lambda g, i: bits(g, lambda t, j: j % 3 == 0)),
    ]
    got_b = [[v & 0xFFFFFFFFFFFFFFFF for v in row] for row in ballots.view(3, n).tolist()]
    assert got_b[1][:32] == [0xFFFFFFFF] * 32 and got_b[1][32:40] == [0xFF] * 8
    assert got_b == exp_b
    exp_f = [
        expect(n, lambda g, i: int(all(x[t] > 0 for t in g))),
        expect(n, lambda g, i: int(any(x[t] > 100 for t in g))),
        expect(n, lambda g, i: int(i == 0)),
        [1] * n,
        [0] * n,
    ]
    assert flags.view(5, n).tolist() == exp_f
    assert exp_f[0][32] == 1 and exp_f[1][RED_N + 32] == 1  # the partial groups matter


def test_quad_functions():
    n = 32
    x = torch.tensor([float((7 * i) % 11 + 1) for i in range(n)])
    f = torch.arange(n, dtype=torch.float32) + 100
    out = zeros(20 * n)
    lib("simd").dispatch("quads", {0: x, 1: f, 2: out}, (1,), (n,))
    xs, fs = x.tolist(), f.tolist()

    def q(fn):
        return per_lane(n, 4, fn)

    exp = {
        "quad_sum": q(lambda g, i: sum(xs[t] for t in g)),
        "quad_min": q(lambda g, i: min(xs[t] for t in g)),
        "quad_max": q(lambda g, i: max(xs[t] for t in g)),
        "quad_prefix_inclusive_sum": q(lambda g, i: sum(xs[t] for t in g[:i + 1])),
        "quad_prefix_exclusive_sum": q(lambda g, i: sum(xs[t] for t in g[:i])),
        "quad_shuffle": q(lambda g, i: xs[g[(i + 1) % 4]]),
        "quad_shuffle_up 1": q(lambda g, i: xs[g[i - 1]] if i >= 1 else xs[g[i]]),
        "quad_shuffle_down 2": q(lambda g, i: xs[g[i + 2]] if i + 2 < 4 else xs[g[i]]),
        "quad_shuffle_rotate_up 1": q(lambda g, i: xs[g[(i - 1) % 4]]),
        "quad_shuffle_rotate_down 3": q(lambda g, i: xs[g[(i + 3) % 4]]),
        "quad_shuffle_xor 2": q(lambda g, i: xs[g[i ^ 2]]),
        "quad_broadcast 2": q(lambda g, i: xs[g[2]]),
        "quad_and_fill_up 1 mod 2": q(lambda g, i: fill_up(xs, fs, g, i, 1, 2)),
        "quad_and_fill_down 1 mod 2": q(lambda g, i: fill_down(xs, fs, g, i, 1, 2)),
        "quad_and_fill_down 2": q(lambda g, i: fill_down(xs, fs, g, i, 2, 4)),
        "quad_and_fill_up 3": q(lambda g, i: fill_up(xs, fs, g, i, 3, 4)),
        "quad_all": q(lambda g, i: float(all(xs[t] > 2 for t in g))),
        "quad_any": q(lambda g, i: float(any(xs[t] > 10 for t in g))),
        "quad_product": q(lambda g, i: math.prod(xs[t] for t in g)),
        "quad_broadcast_first": q(lambda g, i: xs[g[0]]),
    }
    got = out.view(20, n).tolist()
    bad = [k for j, k in enumerate(exp) if got[j] != exp[k]]
    assert not bad, {k: (got[list(exp).index(k)][:8], exp[k][:8]) for k in bad}
    # The spec's quad figure: modulo 2, delta 1 gives fb a fd c.
    assert got[12][:4] == [fs[1], xs[0], fs[3], xs[2]]


def test_quad_reductions_with_partial_quad():
    n = 38
    x = torch.tensor([float((5 * i) % 13 - 6) for i in range(n)])
    out = zeros(4 * n)
    lib("simd").dispatch("quads_partial", {0: x, 1: out}, (1,), (n,))
    xs = x.tolist()
    q = lambda fn: per_lane(n, 4, fn)  # noqa: E731
    exp = [q(lambda g, i: sum(xs[t] for t in g)),
           q(lambda g, i: sum(xs[t] for t in g[:i])),
           q(lambda g, i: max(xs[t] for t in g)),
           q(lambda g, i: float(i == 0))]
    got = out.view(4, n).tolist()
    assert got == exp
    assert exp[0][36] == xs[36] + xs[37]


INDEXING = r"""
#include <metal_stdlib>
using namespace metal;
// Every position attribute, for a 3-D grid; SIMD-groups are cut from the linear thread index
// x + y * Tx + z * Tx * Ty within the threadgroup.
kernel void indexing(device uint* out [[buffer(0)]],
                     uint3 gpos [[thread_position_in_grid]],
                     uint3 tgpos [[threadgroup_position_in_grid]],
                     uint3 lpos [[thread_position_in_threadgroup]],
                     uint lindex [[thread_index_in_threadgroup]],
                     uint3 tptg [[threads_per_threadgroup]],
                     uint3 ntg [[threadgroups_per_grid]],
                     uint lane [[thread_index_in_simdgroup]],
                     uint sg [[simdgroup_index_in_threadgroup]],
                     uint nsg [[simdgroups_per_threadgroup]]) {
  uint3 gsize = tptg * ntg;
  uint g = gpos.x + gpos.y * gsize.x + gpos.z * gsize.x * gsize.y;
  device uint* o = out + g * 16;
  o[0] = gpos.x; o[1] = gpos.y; o[2] = gpos.z;
  o[3] = tgpos.x; o[4] = tgpos.y; o[5] = tgpos.z;
  o[6] = lpos.x; o[7] = lpos.y; o[8] = lpos.z;
  o[9] = lindex;
  o[10] = lane;
  o[11] = sg;
  o[12] = nsg;
  o[13] = simd_shuffle_xor(lindex, 1u);
  o[14] = simd_broadcast(lindex, ushort(31));
  o[15] = tptg.x * 100 + tptg.y * 10 + tptg.z;
}
"""


def test_position_attributes_and_simdgroups_in_a_3d_grid():
    tgs, tpt = (2, 3, 1), (8, 4, 2)
    gsize = [a * b for a, b in zip(tgs, tpt)]
    n = gsize[0] * gsize[1] * gsize[2]
    out = zeros(16 * n, torch.int32)
    lib("idx").dispatch("indexing", {0: out}, tgs, tpt)
    got = out.view(n, 16).tolist()
    for z in range(gsize[2]):
        for y in range(gsize[1]):
            for x in range(gsize[0]):
                g = x + y * gsize[0] + z * gsize[0] * gsize[1]
                lp = (x % 8, y % 4, z % 2)
                li = lp[0] + lp[1] * 8 + lp[2] * 32
                exp = [x, y, z, x // 8, y // 4, z // 2, *lp, li, li % 32, li // 32, 2,
                       li ^ 1, (li // 32) * 32 + 31, 842]
                assert got[g] == exp, (x, y, z)


# ---------------------------------------------------------------------------------------------
# Vectors: swizzles, sizes

VECTORS = r"""
#include <metal_stdlib>
using namespace metal;

kernel void swizzles(device const float4* in [[buffer(0)]],
                     device float* out [[buffer(1)]]) {
  float4 v = in[0];
  float4 r = v.wzyx;           // read swizzles
  float2 s = v.zx;
  float3 t = v.yyw;
  float4 w = v;
  w.zx = float2(10.0f, 20.0f); // write swizzle: w.z = 10, w.x = 20
  float4 u = v;
  u.wy += float2(1.0f, 2.0f);  // compound write swizzle
  float3 e = float3(v.xy, 5.0f);
  e[1] = 9.0f;                 // element index write
  half2 h = half2(v.xy) + half2(0.5h);
  for (int i = 0; i < 4; ++i) out[i] = r[i];
  out[4] = s.x; out[5] = s.y;
  out[6] = t.x; out[7] = t.y; out[8] = t.z;
  for (int i = 0; i < 4; ++i) out[9 + i] = w[i];
  for (int i = 0; i < 4; ++i) out[13 + i] = u[i];
  out[21] = e.x; out[22] = e.y; out[23] = e.z;
  out[24] = float(h.x); out[25] = float(h.y);
  out[26] = dot(v, float4(1.0f)) ;
  out[27] = float(all(v.xy < v.zw)) + 2.0f * float(any(v > float4(3.5f)));
}

kernel void sizes(device uint* out [[buffer(0)]]) {
  out[0] = sizeof(float3);
  out[1] = sizeof(packed_float3);
  out[2] = sizeof(float4);
  out[3] = sizeof(float2);
  out[4] = sizeof(half3);
  out[5] = sizeof(packed_half3);
  out[6] = alignof(float3);
  out[7] = alignof(packed_float3);
  out[8] = sizeof(half);
  out[9] = sizeof(bfloat);
  out[10] = sizeof(int3);
  out[11] = sizeof(uchar3);
  out[12] = sizeof(half4);
  out[13] = alignof(float4);
  out[14] = sizeof(bool);
  out[15] = sizeof(ulong);
}

// The stride of float3 arrays in device memory is 16 bytes, of packed_float3 12 bytes.
kernel void vec3_strides(device float3* a [[buffer(0)]],
                         device packed_float3* b [[buffer(1)]],
                         uint tid [[thread_position_in_grid]]) {
  float f = float(tid);
  a[tid] = float3(f, f + 0.25f, f + 0.5f);
  b[tid] = packed_float3(f, f + 0.25f, f + 0.5f);
}
"""


def test_vector_swizzle_reads_and_writes():
    out = zeros(28)
    lib("vec").dispatch("swizzles", {0: torch.tensor([1.0, 2.0, 3.0, 4.0]), 1: out}, (1,), (1,))
    got = out.tolist()
    assert got[0:4] == [4, 3, 2, 1], "v.wzyx"
    assert got[4:6] == [3, 1], "v.zx"
    assert got[6:9] == [2, 2, 4], "v.yyw"
    assert got[9:13] == [20, 2, 10, 4], "w.zx = float2(10, 20)"
    assert got[13:17] == [1, 4, 3, 5], "u.wy += float2(1, 2)"
    assert got[21:24] == [1, 9, 5], "e[1] = 9"
    assert got[24:26] == [1.5, 2.5]
    assert got[26] == 10
    assert got[27] == 3  # all((1,2) < (3,4)) + 2 * any(v > 3.5)


RGBA = r"""
#include <metal_stdlib>
using namespace metal;
// Color-name swizzles, with a write whose source overlaps its destination.
kernel void swizzles_rgba(device float4* io [[buffer(0)]]) {
  float4 c = io[0];
  c.rgb = c.bgr;
  c.a = c.r + c.g;
  io[0] = c;
  io[1].yx = io[1].xy;         // swizzle write straight into device memory
  io[1].w *= 2.0f;
}

// as_type reinterprets bits; float -> int conversion truncates toward zero.
kernel void conversions(device const float* f [[buffer(0)]],
                        device uint* bits [[buffer(1)]],
                        device int* ints [[buffer(2)]],
                        device half* halves [[buffer(3)]]) {
  bits[0] = as_type<uint>(f[0]);
  bits[1] = as_type<uint>(half2(half(1.0f), half(-2.0f)));
  bits[2] = as_type<ushort>(half(f[1]));
  half2 h = as_type<half2>(0x3C00C000u);  // .x = low 16 bits 0xC000 (-2), .y = 0x3C00 (1)
  halves[0] = h.x;
  halves[1] = h.y;
  ints[0] = int(f[2]);
  ints[1] = int(-f[2]);
  ints[2] = int(uint(f[3]));
  ints[3] = int(as_type<float>(0x40490FDBu) * 1000.0f);
}
"""


def test_vector_rgba_swizzle_write_with_overlapping_source():
    io = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    lib("rgba").dispatch("swizzles_rgba", {0: io}, (1,), (1,))
    assert io.tolist() == [3, 2, 1, 5, 6, 5, 7, 16]


def test_as_type_and_conversions():
    f = torch.tensor([1.0, 0.333, 2.7, 3.99])
    bits, ints, halves = zeros(3, torch.int32), zeros(4, torch.int32), zeros(2, torch.float16)
    lib("rgba").dispatch("conversions", {0: f, 1: bits, 2: ints, 3: halves}, (1,), (1,))
    b = [v & 0xFFFFFFFF for v in bits.tolist()]
    # little endian: .x of a half2 is the low 16 bits
    assert b[0] == 0x3F800000
    assert b[1] == (0xC000 << 16) | 0x3C00
    assert b[2] == torch.tensor([0.333]).half().view(torch.int16).item() & 0xFFFF
    assert halves.tolist() == [-2.0, 1.0]
    assert ints.tolist() == [2, -2, 3, int(math.pi * 1000)]


def test_vector_sizes_and_alignments():
    out = zeros(16, torch.int32)
    lib("vec").dispatch("sizes", {0: out}, (1,), (1,))
    assert out.tolist() == [16, 12, 16, 8, 8, 6, 16, 4, 2, 2, 16, 4, 8, 16, 1, 8]


def test_float3_arrays_have_16_byte_stride_packed_float3_12():
    n = 5
    a, b = zeros(4 * n), zeros(3 * n)
    lib("vec").dispatch("vec3_strides", {0: a, 1: b}, (1,), (n,))
    av = a.view(n, 4)[:, :3].tolist()
    assert av == [[i, i + 0.25, i + 0.5] for i in range(n)]
    assert b.view(n, 3).tolist() == av


# ---------------------------------------------------------------------------------------------
# half and bfloat rounding

NUMERICS = r"""
#include <metal_stdlib>
using namespace metal;

kernel void half_ops(device const half* a [[buffer(0)]],
                     device const half* b [[buffer(1)]],
                     device half* out [[buffer(2)]],
                     uint tid [[thread_position_in_grid]],
                     uint tptg [[threads_per_threadgroup]],
                     uint ntg [[threadgroups_per_grid]]) {
  const uint n = tptg * ntg;  // threads in the (uniform) grid
  half x = a[tid], y = b[tid];
  out[0 * n + tid] = x + y;
  out[1 * n + tid] = x - y;
  out[2 * n + tid] = x * y;
  out[3 * n + tid] = x / y;
  out[4 * n + tid] = (x + y) - x;        // rounded after each operation
  out[5 * n + tid] = x * y + x;          // two roundings (unless contracted: see the test)
}

// 2048 + 1 - 2048 in half: 2049 is not representable, 2048 + 1 rounds to 2048 (ties to even).
kernel void half_2048(device const half* in [[buffer(0)]],
                      device half* out [[buffer(1)]],
                      device float* fout [[buffer(2)]]) {
  half big = in[0], one = in[1];
  half s = big + one;
  out[0] = s - big;
  out[1] = big + one + one;              // left to right: (2048 + 1) + 1 = 2048
  out[2] = big + (one + one);            // 2048 + 2 = 2050
  half h = 2048.0h;
  half k = h + 1.0h;
  out[3] = k - h;
  fout[0] = float(big) + float(one) - float(big);  // in float it is exact
}

kernel void float_to_half(device const float* in [[buffer(0)]],
                          device half* out [[buffer(1)]],
                          uint tid [[thread_position_in_grid]]) {
  out[tid] = half(in[tid]);
}

kernel void float_to_bfloat(device const float* in [[buffer(0)]],
                            device bfloat* out [[buffer(1)]],
                            device float* back [[buffer(2)]],
                            uint tid [[thread_position_in_grid]]) {
  bfloat b = bfloat(in[tid]);
  out[tid] = b;
  back[tid] = float(b);
}

// Apple GPUs have no double: unsuffixed literals are float and the arithmetic stays in float.
kernel void float_literals(device const float* x [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           uint tid [[thread_position_in_grid]],
                           uint tptg [[threads_per_threadgroup]]) {
  float v = x[tid];
  out[tid] = v * 0.1;
  out[tptg + tid] = v / 3.0 + 0.7;
}

kernel void bfloat_ops(device const bfloat* a [[buffer(0)]],
                       device const bfloat* b [[buffer(1)]],
                       device bfloat* out [[buffer(2)]],
                       uint tid [[thread_position_in_grid]],
                       uint tptg [[threads_per_threadgroup]],
                       uint ntg [[threadgroups_per_grid]]) {
  const uint n = tptg * ntg;  // threads in the (uniform) grid
  bfloat x = a[tid], y = b[tid];
  out[0 * n + tid] = x + y;
  out[1 * n + tid] = x - y;
  out[2 * n + tid] = x * y;
  out[3 * n + tid] = x / y;
}
"""


def bits16(t):
    return t.view(torch.int16).tolist()


def test_half_2048_plus_1_minus_2048_is_0():
    out, fout = zeros(4, torch.float16), zeros(1)
    lib("num").dispatch("half_2048", {0: torch.tensor([2048.0, 1.0]).half(), 1: out, 2: fout},
                        (1,), (1,))
    assert out.tolist() == [0.0, 2048.0, 2050.0, 0.0]
    assert fout.tolist() == [1.0]


def test_half_arithmetic_matches_torch_float16_elementwise():
    n = 256
    g = torch.Generator().manual_seed(11)
    a = (torch.randn(n, generator=g) * torch.exp2(torch.randint(-8, 9, (n,), generator=g))).half()
    b = (torch.randn(n, generator=g) * torch.exp2(torch.randint(-8, 9, (n,), generator=g))).half()
    b[b == 0] = 1
    # a few hand-picked cases: ties, subnormals, overflow to inf
    a[:6] = torch.tensor([2048.0, 1.0, 6.1035e-05, 65504.0, 1e-7, -3.0]).half()
    b[:6] = torch.tensor([1.0, 0.0004882812, 6.1035e-05, 65504.0, 3.0, 1024.0]).half()
    out = zeros(6 * n, torch.float16)
    lib("num").dispatch("half_ops", {0: a, 1: b, 2: out}, (4,), (64,))
    got = out.view(6, n)
    exp = [a + b, a - b, a * b, a / b, (a + b) - a]
    for k, e in enumerate(exp):
        assert bits16(got[k]) == bits16(e), ["+", "-", "*", "/", "(a+b)-a"][k]
    # x * y + x: separately rounded, or contracted into one fma (MSL allows fp contraction);
    # either way each element is one of the two.
    separate = a * b + a
    fused = (a.double() * b.double() + a.double()).half()
    ok = (got[5].view(torch.int16) == separate.view(torch.int16)) | \
        (got[5].view(torch.int16) == fused.view(torch.int16))
    assert ok.all()


def test_float_arithmetic_with_unsuffixed_literals_stays_float():
    g = torch.Generator().manual_seed(15)
    x = torch.randn(256, generator=g) * 100
    out = zeros(512)
    lib("num").dispatch("float_literals", {0: x, 1: out}, (1,), (256,))
    f32_one = x * torch.tensor(0.1, dtype=torch.float32)
    f32_two = x / torch.tensor(3.0) + torch.tensor(0.7, dtype=torch.float32)
    assert out[:256].tolist() == f32_one.tolist()
    assert out[256:].tolist() == f32_two.tolist()
    # the same in double and rounded once differs for many elements: the test can tell
    assert (x.double() * 0.1).float().tolist() != f32_one.tolist()


def test_float_to_half_rounds_to_nearest_even():
    vals = [2049.0, 2051.0, 2050.0, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 65519.0, 65520.0,
            1e-8, 2 ** -25, 2 ** -24 * 1.5, -0.0, float("inf"), float("-inf"), 0.1, -1e5]
    g = torch.Generator().manual_seed(12)
    x = torch.cat([torch.tensor(vals), torch.randn(113, generator=g) * 1000])
    out = zeros(len(x), torch.float16)
    lib("num").dispatch_threads("float_to_half", {0: x, 1: out}, (len(x),), (32,))
    assert bits16(out) == bits16(x.half())


def test_float_nan_to_half_and_bfloat_stays_nan():
    x = torch.tensor([float("nan")] * 2)
    h = zeros(2, torch.float16)
    lib("num").dispatch("float_to_half", {0: x, 1: h}, (1,), (2,))
    assert torch.isnan(h).all()
    bf, back = zeros(2, torch.bfloat16), zeros(2)
    lib("num").dispatch("float_to_bfloat", {0: x, 1: bf, 2: back}, (1,), (2,))
    assert torch.isnan(bf).all() and torch.isnan(back).all()


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def test_float_to_bfloat_rounds_to_nearest_even_like_torch():
    ties = [0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF,
            0x00018000, 0x80008000, 0x4B7F8000, 0xC0FF8000]
    vals = [f32(b) for b in ties] + [1.0, -2.5, 3.14159, 1e30, -1e-30, 0.0, float("inf")]
    g = torch.Generator().manual_seed(13)
    x = torch.cat([torch.tensor(vals), torch.randn(200, generator=g) * 50])
    out, back = zeros(len(x), torch.bfloat16), zeros(len(x))
    lib("num").dispatch_threads("float_to_bfloat", {0: x, 1: out, 2: back}, (len(x),), (64,))
    expected = x.to(torch.bfloat16)
    assert bits16(out) == bits16(expected)
    assert back.tolist() == expected.float().tolist()
    # spot checks of the rule itself, independent of torch
    assert bits16(out[:3]) == [0x3F80, 0x3F82, 0x3F81]


def test_bfloat_arithmetic_rounds_each_operation_like_torch():
    n = 128
    g = torch.Generator().manual_seed(14)
    a = (torch.randn(n, generator=g) * 10).to(torch.bfloat16)
    b = (torch.randn(n, generator=g) * 10).to(torch.bfloat16)
    b[b == 0] = 1
    out = zeros(4 * n, torch.bfloat16)
    lib("num").dispatch("bfloat_ops", {0: a, 1: b, 2: out}, (2,), (64,))
    got = out.view(4, n)
    for k, e in enumerate([a + b, a - b, a * b, a / b]):
        assert bits16(got[k]) == bits16(e), ["+", "-", "*", "/"][k]


# ---------------------------------------------------------------------------------------------
# Atomics under contention

ATOMICS = r"""
#include <metal_stdlib>
using namespace metal;

kernel void contended(device atomic_uint* counter [[buffer(0)]],
                      device uint* dev_old [[buffer(1)]],
                      device uint* tg_old [[buffer(2)]],
                      device uint* tg_final [[buffer(3)]],
                      device atomic_int* imax [[buffer(4)]],
                      device atomic_uint* fsum_bits [[buffer(5)]],
                      uint tid [[thread_position_in_grid]],
                      uint lid [[thread_index_in_threadgroup]],
                      uint tg [[threadgroup_position_in_grid]]) {
  threadgroup atomic_uint local_count;
  if (lid == 0) atomic_store_explicit(&local_count, 0u, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);

  dev_old[tid] = atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
  tg_old[tid] = atomic_fetch_add_explicit(&local_count, 1u, memory_order_relaxed);
  atomic_fetch_max_explicit(imax, int(tid * 7 % 1000) - 500, memory_order_relaxed);

  // float add through a compare-and-swap loop, the usual MSL idiom
  uint expected = atomic_load_explicit(fsum_bits, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      fsum_bits, &expected, as_type<uint>(as_type<float>(expected) + 0.5f),
      memory_order_relaxed, memory_order_relaxed)) {
  }

  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (lid == 0) tg_final[tg] = atomic_load_explicit(&local_count, memory_order_relaxed);
}
"""


def test_atomics_under_contention_device_and_threadgroup():
    tgs, per = 8, 256
    n = tgs * per
    counter = zeros(1, torch.int32)
    dev_old, tg_old, tg_final = zeros(n, torch.int32), zeros(n, torch.int32), zeros(tgs, torch.int32)
    imax = torch.tensor([-1000], dtype=torch.int32)
    fsum = torch.zeros(1, dtype=torch.float32)
    lib("atom").dispatch("contended", {0: counter, 1: dev_old, 2: tg_old, 3: tg_final, 4: imax,
                                       5: fsum.view(torch.int32)}, (tgs,), (per,))
    assert counter.item() == n
    assert sorted(dev_old.tolist()) == list(range(n))  # every old value returned exactly once
    for t in range(tgs):
        assert sorted(tg_old[t * per:(t + 1) * per].tolist()) == list(range(per))
    assert tg_final.tolist() == [per] * tgs
    assert imax.item() == max(t * 7 % 1000 - 500 for t in range(n))
    assert fsum.item() == 0.5 * n


# ---------------------------------------------------------------------------------------------
# Constant arguments as bytes / ctypes scalars (the binding convention of the public API)

SCALARS = r"""
#include <metal_stdlib>
using namespace metal;
struct P { uint n; float scale; };
kernel void scaled(device const float* x [[buffer(0)]],
                   device float* y [[buffer(1)]],
                   constant P& p [[buffer(2)]],
                   constant float& bias [[buffer(3)]],
                   uint tid [[thread_position_in_grid]]) {
  if (tid < p.n) y[tid] = x[tid] * p.scale + bias;
}
"""


def test_constant_arguments_from_bytes_and_ctypes():
    x = torch.arange(10, dtype=torch.float32)
    y = torch.full((10,), -1.0)
    params = struct.pack("<If", 7, 2.0)
    lib("scal").dispatch_threads("scaled", {0: x, 1: y, 2: params, 3: ctypes.c_float(0.5)},
                                 (10,), (4,))
    assert y.tolist() == [i * 2.0 + 0.5 for i in range(7)] + [-1.0] * 3


SOURCES = {"sg": SG_MATRIX, "simd": SIMD, "vec": VECTORS, "num": NUMERICS, "atom": ATOMICS,
           "scal": SCALARS, "rgba": RGBA,
           "sg_extras": SG_EXTRAS, "idx": INDEXING}
