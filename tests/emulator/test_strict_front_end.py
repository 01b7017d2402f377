"""The strict front end (mfa_torch.emulator.strict): every shader variant the planners emit parses as MSL 3.1 (C++14)
against Apple's builtin signatures, and a negative control per rule keeps proving that the check rejects what it
must (each snippet is rejected with the construct named, and accepted once the construct is taken out)."""
import itertools
import textwrap
from collections import defaultdict

import pytest

from mfa_torch import _C
from mfa_torch.emulator import strict
from mfa_torch.metal import variants
from mfa_torch.metal.shader_files import shader_dir

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


# ---- (a) every planned variant of every shipped shader

SHIPPED = strict.shipped_variants()


@pytest.mark.parametrize("shader", sorted({path.name for path, _ in SHIPPED}))
def test_every_planned_variant_of_the_shader_passes_the_strict_check(shader):
    failures = []
    for path, defines in (v for v in SHIPPED if v[0].name == shader):
        failures += [f"{finding}   [{' '.join(f'{n}={v}' for n, v in defines)}]"
                     for finding in strict.check(path, defines)]
    assert not failures, "\n".join(failures[:40])


def test_findings_name_the_shipped_file_and_line(tmp_path):
    """A finding in a project header points at that header's line, not at the expanded text."""
    (tmp_path / "helpers.h").write_text(HEADER + "inline float half_of(float x) { return x * 0.5; }\n")
    (tmp_path / "k.metal").write_text('#include "helpers.h"\n'
                                      "kernel void k(device float* o [[buffer(0)]]) { o[0] = half_of(o[0]); }\n")
    findings = strict.check(tmp_path / "k.metal")
    assert [(f.file, f.line) for f in findings] == [(str(tmp_path / "helpers.h"), 3)], findings
    assert str(findings[0]).startswith(f"{tmp_path / 'helpers.h'}:3: unsuffixed floating literal '0.5'")


# ---- planned_variants() covers what the planners can emit

def _wide_sweep_plans():
    """Many more problems than variants.py's grid: every head dim, many lengths and GQA ratios, every flag."""
    for family in variants.GPU_FAMILIES:
        for dtype, head_dim, value_dim in itertools.product(variants.DTYPES, range(1, variants.MAX_HEAD_DIM + 1),
                                                            (1, 100, 256, variants.MAX_VALUE_DIM, None)):
            value_dim = min(value_dim or head_dim, variants.MAX_VALUE_DIM)
            yield from variants.attention_plans(
                variants.attention_problem(family, dtype, head_dim=head_dim, value_dim=value_dim))
        for dtype, mask, count in itertools.product(variants.DTYPES, variants.MASKS, (False, True)):
            for q_len, kv_len, (q_heads, kv_heads) in itertools.product(
                    (1, 3, 8, 9, 17, 25, 33, 1000), (1, 9, 16, 17, 25, 512, 65536), ((1, 1), (8, 2), (64, 1))):
                yield from variants.attention_plans(variants.attention_problem(
                    family, dtype, mask, 64, 64, q_len, kv_len, q_heads, kv_heads, count))
        for dtype, mask, features in itertools.product(variants.DTYPES, variants.MASKS, variants.SCORE_FEATURES):
            yield from variants.attention_plans(variants.attention_problem(family, dtype, mask, score_features=features))
        for dtype, q_len, sinks in itertools.product(variants.DTYPES, (1, 64), (False, True)):
            yield from variants.attention_plans(variants.attention_problem(family, dtype, q_len=q_len, kv_len=4096,
                                                                           sinks=sinks))
        for dtype, q_len, kv_len in itertools.product(variants.DTYPES, (1, 9, 64, 1000), (16, 100, 4096)):
            yield from variants.attention_plans(variants.attention_problem(family, dtype, q_len=q_len, kv_len=kv_len,
                                                                           paged=True))
        for dtype, m, n, k, aligned in itertools.product(variants.DTYPES, (1, 8, 64, 1000), (1, 8, 64, 1000),
                                                         (0, 1, 64, 4096, 100000), (False, True)):
            yield _C.plan_gemm(variants.gemm_problem(family, dtype, m, n, k, aligned=aligned))


def _reach(found):
    """What some variants reach: each (shader, kernel, define, value) and each row of block sizes."""
    values, rows = set(), set()
    for v in found:
        values.update((v.shader, v.kernel, name, value) for name, value in v.defines)
        rows.add((v.shader, v.kernel, tuple((n, x) for n, x in v.defines if n.startswith("MFA_BLOCK_"))))
    return values, rows


def test_planned_variants_reach_every_define_value_and_block_row_the_planners_emit():
    planned_values, planned_rows = _reach(variants.planned_variants())
    swept_values, swept_rows = _reach(variants.variants_of(_wide_sweep_plans()))
    assert swept_values - planned_values == set(), "add problems to mfa_torch/metal/variants.py"
    assert swept_rows - planned_rows == set(), "add problems to mfa_torch/metal/variants.py"
    # the sweep is the wider one: it reaches every head dim the planners round to
    head_dims = {int(x) for s, _, name, x in swept_values if name == "MFA_HEAD_DIM"}
    assert head_dims == set(range(8, variants.MAX_HEAD_DIM + 1, 8))


def test_every_shipped_shader_is_checked():
    assert {p.name for p, _ in SHIPPED} == {p.name for p in shader_dir().glob("*.metal")}
    assert len(SHIPPED) == len(set(SHIPPED))  # each distinct library parsed once


# ---- (b) negative controls: (snippet with the construct, the same without it, words the finding must contain)

def _kernel(body, params="device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]", before=""):
    return HEADER + before + f"kernel void k({params}) {{\n{textwrap.dedent(body)}\n}}\n"


CONSTRUCTS = {
    "double": (_kernel("double x = out[0]; out[0] = float(x);"), _kernel("float x = out[0]; out[0] = x;"),
               ["double"]),
    "printf": (_kernel('printf("%f", out[0]); out[0] = 1.0f;'), _kernel("out[0] = 1.0f;"), ["printf"]),
    "std": (_kernel("out[0] = std::max(out[0], 1.0f);"), _kernel("out[0] = max(out[0], 1.0f);"), ["std"]),
    "new": (_kernel("thread float* p = new float[4]; out[0] = p[0];"),
            _kernel("thread float p[4] = {}; out[0] = p[0];"), ["new"]),
    "delete": (_kernel("thread float x = 1.0f; thread float* p = &x; delete p; out[0] = x;"),
               _kernel("thread float x = 1.0f; thread float* p = &x; out[0] = *p;"), ["delete"]),
    "goto": (_kernel("if (tid > 4) goto done; out[tid] = 1.0f;\ndone:\n  out[0] += 1.0f;"),
             _kernel("if (tid <= 4) out[tid] = 1.0f;\n  out[0] += 1.0f;"), ["goto"]),
    "virtual": (_kernel("Scale s; out[0] = s.apply(out[0]);",
                        before="struct Scale { virtual float apply(float x) const { return 2.0f * x; } };\n"),
                _kernel("Scale s; out[0] = s.apply(out[0]);",
                        before="struct Scale { float apply(float x) const { return 2.0f * x; } };\n"), ["virtual"]),
    "try": (_kernel("try { out[0] = 1.0f; } catch (...) { out[0] = 0.0f; }"), _kernel("out[0] = 1.0f;"), ["try"]),
    "throw": (_kernel("if (tid > 64) throw 1; out[tid] = 1.0f;"), _kernel("if (tid <= 64) out[tid] = 1.0f;"),
              ["throw"]),
    "thread_local": (_kernel("out[0] = counter;", before="thread_local float counter = 0.0f;\n"),
                     _kernel("out[0] = counter;", before="constant float counter = 0.0f;\n"), ["thread_local"]),
    "lambda": (_kernel("auto twice = [](float x) { return 2.0f * x; }; out[0] = twice(out[0]);"),
               _kernel("out[0] = twice(out[0]);", before="inline float twice(float x) { return 2.0f * x; }\n"),
               ["lambda"]),
    "recursion": (_kernel("out[0] = float(fact(tid));",
                          before="inline uint fact(uint n) { return n < 2 ? 1 : n * fact(n - 1); }\n"),
                  _kernel("out[0] = float(fact(tid));",
                          before="inline uint fact(uint n) { uint f = 1; for (uint i = 2; i <= n; i++) f *= i; "
                                 "return f; }\n"), ["recursion", "fact"]),
    "mutual_recursion": (_kernel("out[0] = float(even(tid));",
                                 before="bool odd(uint n);\ninline bool even(uint n) { return n == 0 || odd(n - 1); }\n"
                                        "inline bool odd(uint n) { return n != 0 && even(n - 1); }\n"),
                         _kernel("out[0] = float(even(tid));", before="inline bool even(uint n) { return n % 2 == 0; }\n"),
                         ["recursion", "even", "odd"]),
    "unsuffixed_literal": (_kernel("out[tid] *= 0.5;"), _kernel("out[tid] *= 0.5f;"), ["unsuffixed", "0.5"]),
    "cxx17_if_constexpr": (_kernel("if constexpr (sizeof(float) == 4) out[0] = 1.0f;"),
                           _kernel("if (sizeof(float) == 4) out[0] = 1.0f;"), ["constexpr if"]),
    # builtin signatures
    "simdgroup_load_from_thread_memory": (
        _kernel("thread float local[64] = {}; simdgroup_float8x8 m; simdgroup_load(m, local, 8); "
                "simdgroup_store(m, out, 8);"),
        _kernel("simdgroup_float8x8 m; simdgroup_load(m, out, 8); simdgroup_store(m, out, 8);"), ["simdgroup_load"]),
    "simdgroup_load_of_another_element_type": (
        _kernel("simdgroup_float8x8 m; simdgroup_load(m, in, 8); simdgroup_store(m, out, 8);",
                params="device const half* in [[buffer(0)]], device float* out [[buffer(1)]]"),
        _kernel("simdgroup_half8x8 m; simdgroup_load(m, in, 8); simdgroup_store(m, out, 8);",
                params="device const half* in [[buffer(0)]], device half* out [[buffer(1)]]"), ["simdgroup_load"]),
    "simdgroup_store_of_another_element_type": (
        _kernel("simdgroup_float8x8 m; simdgroup_load(m, in, 8); simdgroup_store(m, out, 8);",
                params="device const float* in [[buffer(0)]], device half* out [[buffer(1)]]"),
        _kernel("simdgroup_float8x8 m; simdgroup_load(m, in, 8); simdgroup_store(m, out, 8);",
                params="device const float* in [[buffer(0)]], device float* out [[buffer(1)]]"), ["simdgroup_store"]),
    "min_of_mixed_types": (_kernel("out[0] = min(out[0], 1);"), _kernel("out[0] = min(out[0], 1.0f);"), ["min"]),
    "max_of_three": (_kernel("out[0] = max(out[0], out[1], 0.0f);"), _kernel("out[0] = max3(out[0], out[1], 0.0f);"),
                     ["max"]),
    "max_of_int_and_uint": (_kernel("out[0] = float(max(int(tid) - 4, tid));"),
                            _kernel("out[0] = float(max(int(tid) - 4, int(tid)));"), ["max"]),
    "bare_mem_flags": (_kernel("threadgroup_barrier(mem_threadgroup); out[tid] = 1.0f;"),
                       _kernel("threadgroup_barrier(mem_flags::mem_threadgroup); out[tid] = 1.0f;"),
                       ["mem_threadgroup"]),
    "precise_function_msl_lacks": (_kernel("out[tid] = precise::erf(out[tid]);"),
                                   _kernel("out[tid] = precise::tanh(out[tid]);"), ["erf"]),
    "fast_function_msl_lacks": (_kernel("out[tid] = fast::log1p(out[tid]);"),
                                _kernel("out[tid] = fast::log(out[tid]);"), ["log1p"]),
    "precise_function_of_half": (_kernel("out[tid] = float(precise::exp(half(out[tid])));"),
                                 _kernel("out[tid] = float(exp(half(out[tid])));"), ["exp"]),
    # kernel signatures
    "pointer_without_address_space": (
        _kernel("out[0] = 1.0f;", params="float* out [[buffer(0)]]"),
        _kernel("out[0] = 1.0f;", params="device float* out [[buffer(0)]]"), ["'out'", "address space"]),
    "buffer_in_threadgroup_memory": (
        _kernel("out[0] = 1.0f;", params="threadgroup float* out [[buffer(0)]]"),
        _kernel("out[0] = 1.0f;", params="threadgroup float* out [[threadgroup(0)]]"), ["buffer(0)", "device"]),
    "parameter_without_attribute": (
        _kernel("out[0] = float(n);", params="device float* out [[buffer(0)]], uint n"),
        _kernel("out[0] = float(n);", params="device float* out [[buffer(0)]], uint n [[threads_per_grid]]"),
        ["'n'", "attribute"]),
    "shared_buffer_index": (
        _kernel("out[0] = in[0];", params="device const float* in [[buffer(1)]], device float* out [[buffer(1)]]"),
        _kernel("out[0] = in[0];", params="device const float* in [[buffer(0)]], device float* out [[buffer(1)]]"),
        ["'in'", "'out'", "buffer(1)"]),
    "shared_buffer_index_through_macros": (
        _kernel("out[0] = in[0];", params="device const float* in [[buffer(IN)]], device float* out [[buffer(OUT)]]",
                before="#define IN 2\n#define OUT (1 + 1)\n"),
        _kernel("out[0] = in[0];", params="device const float* in [[buffer(IN)]], device float* out [[buffer(OUT)]]",
                before="#define IN 2\n#define OUT (1 + 2)\n"), ["buffer(2)"]),
}
for _attribute, _allowed in strict.BUILTIN_ATTRIBUTE_TYPES.items():
    CONSTRUCTS[f"{_attribute}_of_a_wrong_type"] = (
        _kernel("out[0] = float(x);", params=f"device float* out [[buffer(0)]], int x [[{_attribute}]]"),
        _kernel("out[0] = float(x);", params=f"device float* out [[buffer(0)]], {_allowed[0]} x [[{_attribute}]]"),
        [_attribute, "'int'"])


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_the_construct_is_rejected_with_its_name_and_accepted_without_it(name):
    bad, good, words = CONSTRUCTS[name]
    findings = strict.check(bad)
    assert findings, f"the strict check accepted {name}"
    assert any(all(w in f.message for w in words) for f in findings), "\n".join(map(str, findings))
    assert strict.check(good) == [], "\n".join(map(str, strict.check(good)))


# ---- (c) mixed-precision matrix products are legal Metal

MIXED_PRECISION_MMA = HEADER + """
// As llama.cpp's ggml-metal kernel_mul_mm: half operands staged in threadgroup memory, float accumulators.
kernel void mul_mm(device const half* a [[buffer(0)]], device const float* b [[buffer(1)]],
                   device float* c [[buffer(2)]], ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup half sa[64];
  threadgroup float sb[64];
  sa[lane] = a[lane];
  sb[lane] = b[lane];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_half8x8 ma;
  simdgroup_float8x8 mb;
  simdgroup_float8x8 mc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  simdgroup_load(ma, sa, 8, 0, false);
  simdgroup_load(mb, sb, 8);
  simdgroup_multiply_accumulate(mc, mb, ma, mc);
  simdgroup_half8x8 mh;
  simdgroup_load(mh, a, 8, ulong2(0, 0), true);
  simdgroup_multiply_accumulate(mc, ma, mh, mc);
  simdgroup_multiply(mc, ma, mh);
  simdgroup_store(mc, c, 8);
}
"""


def test_mixed_precision_simdgroup_multiply_accumulate_is_accepted():
    assert strict.check(MIXED_PRECISION_MMA) == []


def test_command_line_checks_one_file_with_defines(tmp_path, capsys):
    path = tmp_path / "k.metal"
    path.write_text(_kernel("out[0] = SCALE;"))
    assert strict.main([str(path), "-D", "SCALE=2.0f"]) == 0
    assert strict.main([str(path), "-D", "SCALE=2.0"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:") and "unsuffixed floating literal" in out
