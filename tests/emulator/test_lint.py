"""Tests of the static MSL address-space lint (mfa_torch.emulator.lint).

Each planted bug carries a `// BUG` marker; the lint must report it on exactly that line. Realistic
clean kernels must produce no finding. Needs the PyPI wheel `libclang`.
"""

import subprocess
import sys
import textwrap

import pytest

from mfa_torch.emulator import lint

pytestmark = pytest.mark.emulator

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def bug_lines(src):
    return [i + 1 for i, line in enumerate(src.splitlines()) if "// BUG" in line]


# ---- planted mismatches: name -> (source body, words expected in the message)
PLANTED = {
    "threadgroup_to_device_param": ("""
inline void store_dev(device float* p, float v) { p[0] = v; }
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  threadgroup float tile[64];
  tile[tid] = 1.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  store_dev(tile, 2.0f);  // BUG
  out[tid] = tile[tid];
}
""", ["threadgroup", "device"]),
    "threadgroup_param_to_device_const_half": ("""
inline float load_h(device const half* p, uint i) { return float(p[i]); }
kernel void k(device float* out [[buffer(0)]], threadgroup half* tg [[threadgroup(0)]],
              uint tid [[thread_position_in_grid]]) {
  out[tid] = load_h(tg, tid);  // BUG
}
""", ["threadgroup", "device"]),
    "write_through_constant_pointer": ("""
kernel void k(device float* out [[buffer(0)]], constant float* c [[buffer(1)]],
              uint tid [[thread_position_in_grid]]) {
  c[tid] = 2.0f;  // BUG
  out[tid] = c[0];
}
""", ["constant"]),
    "write_through_constant_reference_field": ("""
struct Params { uint n; float scale; };
kernel void k(device float* out [[buffer(0)]], constant Params& p [[buffer(1)]],
              uint tid [[thread_position_in_grid]]) {
  p.scale = 3.0f;  // BUG
  out[tid] = p.scale;
}
""", ["constant"]),
    "write_program_scope_constant": ("""
constant float kScale = 0.5f;
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  kScale = 1.0f;  // BUG
  out[tid] = kScale;
}
""", ["constant"]),
    "struct_store_into_constant": ("""
struct Params { uint n; float scale; };
kernel void k(constant Params* p [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  Params q = p[0];
  q.n += 1;
  p[1] = q;  // BUG
}
""", ["constant"]),
    "device_pointer_initialised_from_threadgroup_array": ("""
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  threadgroup float tile[32];
  device float* alias = tile;  // BUG
  alias[tid] = 1.0f;
  out[tid] = tile[tid];
}
""", ["threadgroup", "device"]),
    "thread_pointer_from_device": ("""
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  thread float* p = out + tid;  // BUG
  *p = 1.0f;
}
""", ["device"]),
    "device_pointer_from_thread_address": ("""
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  float x = 1.0f;
  device float* p = &x;  // BUG
  out[tid] = *p;
}
""", ["device"]),
    "pointer_assignment_between_spaces": ("""
kernel void k(device float* out [[buffer(0)]], threadgroup float* tg [[threadgroup(0)]],
              uint tid [[thread_position_in_grid]]) {
  device float* p = out;
  p = tg;  // BUG
  p[tid] = 1.0f;
}
""", ["threadgroup", "device"]),
    "returning_threadgroup_as_device": ("""
inline device float* pick(threadgroup float* t, uint i) {
  return t + i;  // BUG
}
kernel void k(device float* out [[buffer(0)]], threadgroup float* tg [[threadgroup(0)]],
              uint tid [[thread_position_in_grid]]) {
  pick(tg, tid)[0] = 1.0f;
}
""", ["threadgroup", "device"]),
    "template_helper_wrong_space": ("""
template <typename T>
inline T sum2(device const T* p) { return p[0] + p[1]; }
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  threadgroup float tile[64];
  tile[tid] = float(tid);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[tid] = sum2(tile);  // BUG
}
""", ["threadgroup", "device"]),
    "error_inside_template_instantiation": ("""
template <typename T>
kernel void k(device T* out [[buffer(0)]], threadgroup T* tg [[threadgroup(0)]],
              uint tid [[thread_position_in_grid]]) {
  device T* p = tg;  // BUG
  p[tid] = T(0);
  out[tid] = tg[tid];
}
template [[host_name("k_f32")]] kernel void k<float>(device float*, threadgroup float*, uint);
""", ["threadgroup", "device"]),
    "reference_binding_across_spaces": ("""
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  threadgroup float acc[32];
  device float& r = acc[tid];  // BUG
  r = 1.0f;
  out[tid] = acc[tid];
}
""", ["threadgroup", "device"]),
    "simdgroup_load_from_thread_memory": ("""
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
  float local[64];
  for (int i = 0; i < 64; ++i) local[i] = float(i);
  simdgroup_float8x8 m;
  simdgroup_load(m, local, 8);  // BUG
  simdgroup_store(m, out, 8);
}
""", ["simdgroup_load"]),
    "atomic_on_constant": ("""
kernel void k(constant atomic_uint* counter [[buffer(0)]]) {
  atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);  // BUG
}
""", ["constant"]),
    "multiple_bugs_in_one_file": ("""
inline void f(device float* p) { p[0] = 0.0f; }
kernel void k(device float* out [[buffer(0)]], constant float* c [[buffer(1)]],
              threadgroup float* tg [[threadgroup(0)]]) {
  f(tg);  // BUG
  c[0] = 1.0f;  // BUG
  // a comment mentioning threadgroup float x[4]; is not a declaration
  threadgroup float* q = tg;
  device float* d = q;  // BUG
  d[0] = out[0];
}
""", []),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_mismatch_reported_at_its_line(tmp_path, name):
    body, words = PLANTED[name]
    src = HEADER + textwrap.dedent(body)
    path = tmp_path / f"{name}.metal"
    path.write_text(src)
    findings = lint.check(path)
    assert sorted({f.line for f in findings}) == bug_lines(src), "\n".join(map(str, findings))
    for f in findings:
        assert f.file == str(path)
        assert str(f) == f"{path}:{f.line}: {f.message}"
    for w in words:
        assert any(w in f.message for f in findings), (w, findings)


def test_source_text_is_accepted():
    src = HEADER + PLANTED["write_through_constant_pointer"][0]
    findings = lint.check(src)
    assert [f.line for f in findings] == bug_lines(src)


def test_finding_in_included_project_header_names_the_header(tmp_path):
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "helpers.h").write_text(HEADER + textwrap.dedent("""
        inline float read_dev(device const float* p) { return p[0]; }
        inline float bad(threadgroup float* t) {
          device float* d = t;  // BUG
          return d[0];
        }
        """))
    (tmp_path / "k.metal").write_text(textwrap.dedent("""\
        #include "helpers.h"
        kernel void k(device float* out [[buffer(0)]], threadgroup float* tg [[threadgroup(0)]]) {
          out[0] = read_dev(tg);  // BUG
        }
        """))
    findings = lint.check(tmp_path / "k.metal", include_dirs=[inc])
    got = sorted((f.file.replace("\\", "/").rsplit("/", 1)[-1], f.line) for f in findings)
    assert got == [("helpers.h", bug_lines((inc / "helpers.h").read_text())[0]), ("k.metal", 3)]


# ---- realistic clean kernels: no finding

CLEAN_GEMM = """\
#include <metal_stdlib>
using namespace metal;

// Tiled GEMM: C[M,N] = A[M,K] * B[K,N], one SIMD-group per 8x8 block per iteration.
constant uint BM = 32;
constant bool use_bias [[function_constant(0)]];

template <typename T>
kernel void gemm(device const T* A [[buffer(0)]],
                 device const T* B [[buffer(1)]],
                 device float* C [[buffer(2)]],
                 constant uint3& dims [[buffer(3)]],
                 device const float* bias [[buffer(4), function_constant(use_bias)]],
                 uint3 tgid [[threadgroup_position_in_grid]],
                 ushort sgid [[simdgroup_index_in_threadgroup]],
                 ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup T As[32 * 8];
  threadgroup T Bs[8 * 32];
  simdgroup_matrix<T, 8, 8> a, b;
  simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  const uint M = dims.x, N = dims.y, K = dims.z;
  for (uint k = 0; k < K; k += 8) {
    // cooperative load
    As[lane] = A[(tgid.y * BM + lane) * K + k];
    Bs[lane] = B[k * N + tgid.x * BM + lane];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_load(a, As, 8, ulong2(0, sgid * 8));
    simdgroup_load(b, Bs + sgid * 8 * 32, 32, ulong2(0, 0), true);
    simdgroup_multiply_accumulate(acc, a, b, acc);
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (use_bias) {
    thread auto& e = acc.thread_elements();
    e[0] += bias[lane];
    e.y = max(e.y, 0.0f);
  }
  simdgroup_store(acc, C + tgid.y * BM * N, N, ulong2(tgid.x * BM, sgid * 8));
  (void)M;
}

template [[host_name("gemm_f32")]] kernel void gemm<float>(device const float*, device const float*, device float*, constant uint3&, device const float*, uint3, ushort, ushort);
template [[host_name("gemm_f16")]] kernel void gemm<half>(device const half*, device const half*, device float*, constant uint3&, device const float*, uint3, ushort, ushort);
template [[host_name("gemm_bf16")]] kernel void gemm<bfloat>(device const bfloat*, device const bfloat*, device float*, constant uint3&, device const float*, uint3, ushort, ushort);
"""

CLEAN_ATTENTION = """\
#include <metal_stdlib>
#include <metal_simdgroup_matrix>
using namespace metal;

struct Params {
  uint L;
  uint D;
  float scale;
};

constant constexpr int TILE = 32;

// Helpers taking explicit address spaces.
static inline float row_max(threadgroup const float* row, uint n) {
  float m = -INFINITY;
  for (uint i = 0; i < n; ++i) m = max(m, row[i]);
  return m;
}
inline void load_row(threadgroup float* dst, device const half* src, uint n, uint lane) {
  for (uint i = lane; i < n; i += 32) dst[i] = float(src[i]);
}
inline float dot_tg(threadgroup float* a, thread const float* b, uint n) {
  float s = 0.0f;
  for (uint i = 0; i < n; ++i) s = fma(a[i], b[i], s);
  return s;
}
template <typename T>
inline T warp_sum(T x) { return simd_sum(x); }

kernel void softmax_rows(device const half* x [[buffer(0)]],
                         device half* y [[buffer(1)]],
                         constant Params& p [[buffer(2)]],
                         uint row [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]],
                         uint lane [[thread_index_in_simdgroup]],
                         uint sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float buf[1024];
  threadgroup float partial[32];
  load_row(buf, x + row * p.L, p.L, tid);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float m = row_max(buf, p.L);
  float s = 0.0f;
  for (uint i = tid; i < p.L; i += 32) s += precise::exp(buf[i] - m);
  s = warp_sum(s);
  if (lane == 0) partial[sg] = s;
  threadgroup_barrier(mem_flags::mem_threadgroup | mem_flags::mem_device);
  float inv = 1.0f / partial[0];
  for (uint i = tid; i < p.L; i += 32) y[row * p.L + i] = half(fast::exp(buf[i] - m) * inv);
}

kernel void attn_like(device const half* Q [[buffer(0)]],
                      device const half* K [[buffer(1)]],
                      device float* O [[buffer(2)]],
                      constant Params& p [[buffer(3)]],
                      device atomic_uint* counter [[buffer(4)]],
                      threadgroup float* dyn [[threadgroup(0)]],
                      uint2 gid [[thread_position_in_grid]],
                      ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float q_tile[TILE * 64];
  threadgroup atomic_uint tg_count;
  if (lane == 0) atomic_store_explicit(&tg_count, 0u, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  load_row(q_tile, Q + gid.y * p.D, p.D, lane);
  thread float k_reg[64];
  for (uint d = 0; d < 64; ++d) k_reg[d] = float(K[gid.x * p.D + d]);
  float s = dot_tg(q_tile, k_reg, p.D) * p.scale;
  float4 v = float4(s, 0.0f, float2(1.0f, 2.0f));
  v.zx = float2(v.y, v.w);
  half2 h = half2(1.0h, half(s));
  bfloat bf = bfloat(s);
  s += float(h.x) + float(bf) + v.x;
  float other = simd_shuffle_xor(s, 1);
  other = simd_shuffle_and_fill_down(other, s, 4, 8);
  uint bits = as_type<uint>(other);
  simd_vote vote = simd_ballot(bits != 0u);
  if (simd_is_first() && static_cast<simd_vote::vote_t>(vote) != 0)
    atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
  atomic_fetch_add_explicit(&tg_count, 1u, memory_order_relaxed);
  dyn[lane] = isnan(s) ? 0.0f : select(s, 0.0f, isinf(s));
  threadgroup float* alias = dyn + 1;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  O[gid.y * p.L + gid.x] = alias[0] + clamp(s, -1.0f, 1.0f) + float(numeric_limits<half>::max());
}
"""

CLEAN_MISC = HEADER + textwrap.dedent("""
    #define BLOCK 64
    struct Params { uint n; float eps; };
    constant constexpr float kLog2e = 1.4426950408889634f;
    constant bool has_weight [[function_constant(0)]];
    constant int kRows [[function_constant(1)]];

    // RMS-norm style reduction with a threadgroup scratch array and a partial last SIMD-group.
    kernel void rms_norm(device const half* x [[buffer(0)]],
                         device half* y [[buffer(1)]],
                         device const half* w [[buffer(2), function_constant(has_weight)]],
                         constant Params& p [[buffer(3)]],
                         uint row [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]],
                         uint ntg [[threads_per_threadgroup]],
                         uint lane [[thread_index_in_simdgroup]],
                         uint sg [[simdgroup_index_in_threadgroup]],
                         uint nsg [[simdgroups_per_threadgroup]]) {
      threadgroup float partial[32];
      Params q = p;                        // copy a struct out of constant memory
      float acc = 0.0f;
      for (uint i = tid; i < q.n; i += ntg) {
        float v = float(x[row * q.n + i]);
        acc += v * v;
      }
      acc = simd_sum(acc);
      if (simd_is_first()) partial[sg] = acc;
      threadgroup_barrier(mem_flags::mem_threadgroup);
      float total = lane < nsg ? partial[lane] : 0.0f;
      total = simd_sum(total);
      float inv = rsqrt(total / float(q.n) + q.eps);
      for (uint i = tid; i < q.n; i += ntg) {
        float wi = has_weight ? float(w[i]) : 1.0f;
        y[row * q.n + i] = half(float(x[row * q.n + i]) * inv * wi);
      }
    }

    struct Stats { float m; float l; };
    inline void merge(thread Stats& a, Stats b) {
      float m = max(a.m, b.m);
      a.l = a.l * exp2((a.m - m) * kLog2e) + b.l * exp2((b.m - m) * kLog2e);
      a.m = m;
    }

    kernel void vec_ops(device float4* out [[buffer(0)]],
                        device const packed_float3* pk [[buffer(1)]],
                        threadgroup Stats* st [[threadgroup(0)]],
                        device atomic_int* hist [[buffer(2)]],
                        uint3 gid [[thread_position_in_grid]],
                        uint3 tpg [[threads_per_threadgroup]],
                        ushort lane [[thread_index_in_simdgroup]]) {
      threadgroup atomic_uint tg_count;
      threadgroup Stats local_stats[BLOCK];
      if (lane == 0) atomic_store_explicit(&tg_count, 0u, memory_order_relaxed);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      float3 a = float3(pk[gid.x]);
      float4 v = float4(a, 1.0f);
      v.zx = float2(v.y, 2.0f);
      v.xy += float2(1.0f);
      half4 h = half4(v);
      bfloat2 b = bfloat2(bfloat(v.x), bfloat(1.0f));
      v.w = dot(v.xyz, float3(1.0f)) + float(h.w) + float(b.y);
      Stats s = {v.x, 1.0f};
      local_stats[lane % BLOCK] = s;         // struct store into threadgroup memory
      Stats t = local_stats[0];              // and a copy out of it
      merge(s, t);
      st[lane] = s;
      v.x = simd_shuffle_down(v.x, 1) + simd_shuffle_up(v.x, 1) + simd_shuffle_rotate_up(v.x, 3);
      v.y = simd_shuffle_and_fill_up(v.y, 0.0f, 2, 8) + quad_sum(v.y) + simd_prefix_exclusive_sum(v.y);
      v.z = simd_broadcast(v.z, 0) + simd_broadcast_first(v.z) + simd_max(v.z);
      uint bits = as_type<uint>(v.w);
      int3 ia = int3(7, -3, 12);
      bool3 positive = ia > int3(0);       // MSL comparisons give bool vectors
      bool4 nan4 = isnan(v);
      if (positive.x && !all(positive) && !any(nan4)) v.x += 1.0f;
      if (simd_all(bits != 0u) || simd_any(isnan(v.w)) || quad_any(v.w > 0.0f)) v.w = 0.0f;
      ulong mask = static_cast<ulong>(simd_active_threads_mask());
      atomic_fetch_add_explicit(&hist[bits & 7u], int(mask & 1), memory_order_relaxed);
      atomic_fetch_max_explicit(&tg_count, uint(lane), memory_order_relaxed);
      int rows = kRows;
      v *= metal::precise::exp(v) * fast::tanh(v) * float(rows);
      v = clamp(v, float4(-1.0f), float4(1.0f)) + select(v, float4(0.0f), isinf(v));
      simdgroup_barrier(mem_flags::mem_none);
      out[gid.x + gid.y * tpg.x] = v + float4(float(atomic_load_explicit(&tg_count, memory_order_relaxed)));
    }
    """)


@pytest.mark.parametrize("name", ["gemm", "attention", "misc"])
def test_clean_realistic_kernels_have_no_findings(tmp_path, name):
    src = {"gemm": CLEAN_GEMM, "attention": CLEAN_ATTENTION, "misc": CLEAN_MISC}[name]
    path = tmp_path / f"{name}.metal"
    path.write_text(src)
    assert lint.check(path) == []


def test_unparseable_input_raises_lint_error():
    with pytest.raises(lint.LintError, match="cannot parse"):
        lint.check(HEADER + "kernel void k(device float* o [[buffer(0)]]) { o[0] = nope(1) + ; }")


# ---- command line (in process through main(), plus one real `python -m` run)

def run_cli(capsys, *args):
    code = lint.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes(tmp_path, capsys):
    clean = tmp_path / "clean.metal"
    clean.write_text(CLEAN_GEMM)
    bad = tmp_path / "bad.metal"
    bad.write_text(HEADER + textwrap.dedent(PLANTED["threadgroup_to_device_param"][0]))
    line = bug_lines(bad.read_text())[0]
    broken = tmp_path / "broken.metal"
    broken.write_text("kernel void k(device float* o) { o[0] = ; }\n")

    code, out, err = run_cli(capsys, clean)
    assert (code, out) == (0, ""), err

    code, out, err = run_cli(capsys, bad, clean)
    assert code == 1, err
    assert out.startswith(f"{bad}:{line}: address-space mismatch"), out
    assert len(out.splitlines()) == 1

    code, out, err = run_cli(capsys, broken)
    assert code == 2
    assert "cannot parse" in err and f"{broken}:1" in err

    code, out, err = run_cli(capsys, tmp_path / "missing.metal")
    assert code == 2 and "no such file" in err

    code, out, err = run_cli(capsys)  # no PATH: usage error
    assert code == 2

    code, out, err = run_cli(capsys, tmp_path)  # a directory: every .metal below it
    assert code == 2  # broken.metal is in there
    assert f"{bad}:{line}:" in out


def test_cli_module_entry_point(tmp_path):
    bad = tmp_path / "bad.metal"
    bad.write_text(HEADER + textwrap.dedent(PLANTED["write_through_constant_pointer"][0]))
    broken = tmp_path / "broken.metal"
    broken.write_text("kernel void k(device float* o) { o[0] = ; }\n")
    r = subprocess.run([sys.executable, "-m", "mfa_torch.emulator.lint", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith(f"{bad}:{bug_lines(bad.read_text())[0]}: ")
    r = subprocess.run([sys.executable, "-m", "mfa_torch.emulator.lint", str(broken)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
