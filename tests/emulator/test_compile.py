"""From MSL source to a library: the source rewriter, kernel discovery, includes, defines, function
constants, compile errors naming the .metal file and line, and the cache."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from mfa_torch import emulator
from mfa_torch.emulator import translate
from mfa_torch.emulator.errors import CompileError

pytestmark = pytest.mark.emulator

EMULATOR_DIR = pathlib.Path(emulator.__file__).parent


# ---- the source rewriter (no compiler involved) ----------------------------------------------------


def rewritten(source, **options):
    return translate.translate(textwrap.dedent(source), **options).text


@pytest.mark.parametrize("declaration,expected", [
    ("threadgroup float As[16 * 8];", "auto& As = ::msl_rt::threadgroup_object<float [ 16 * 8 ], 0>();"),
    ("threadgroup half tile[BM][BK + 4];", "auto& tile = ::msl_rt::threadgroup_object<half [ BM ] [ BK + 4 ], 0>();"),
    ("threadgroup Accum sums;", "auto& sums = ::msl_rt::threadgroup_object<Accum , 0>();"),
    ("threadgroup vec<float, 4> a[2], b;",
     "auto& a = ::msl_rt::threadgroup_object<vec < float , 4 > [ 2 ], 0>(); "
     "auto& b = ::msl_rt::threadgroup_object<vec < float , 4 > , 1>();"),
    ("threadgroup atomic_uint counter;", "auto& counter = ::msl_rt::threadgroup_object<atomic_uint , 0>();"),
    ("threadgroup float a[N < 4 ? 8 : 16];", "auto& a = ::msl_rt::threadgroup_object<float [ N < 4 ? 8 : 16 ], 0>();"),
])
def test_threadgroup_declarations_become_shared_objects(declaration, expected):
    out = rewritten(f"void f() {{\n  {declaration}\n}}\n")
    assert expected in out
    assert out.count("\n") == 3  # lines are kept


@pytest.mark.parametrize("statement", [
    "threadgroup float* p = buffer;",
    "threadgroup float& r = tile[0];",
    "threadgroup_barrier(mem_flags::mem_threadgroup);",
    "x = threadgroup_size * 2;",
])
def test_pointers_references_and_other_names_are_left_alone(statement):
    assert statement.split()[0] in rewritten(f"void f() {{ {statement} }}")
    assert "threadgroup_object" not in rewritten(f"void f() {{ {statement} }}")


def test_literal_suffixes():
    out = rewritten("float f() { return 1.5h + 2h + 1e-3H + 0.25bf + 3.0f + 0x1Fu; }")
    assert "half(1.5f)" in out and "half(2.0f)" in out and "half(1e-3f)" in out and "bfloat(0.25f)" in out
    assert "3.0f" in out and "0x1Fu" in out


def test_function_constants_by_name_and_index():
    source = """
    constant bool A [[function_constant(0)]];
    constant float B [[function_constant(1)]];
    constant int C [[function_constant(2)]];
    constant bool C_SET = is_function_constant_defined(C);
    constant bool A_SET = is_function_constant_defined(A);
    """
    out = translate.translate(textwrap.dedent(source), function_constants={"A": True, 1: 0.1})
    assert "static constexpr bool A = true;" in out.text
    assert f"static constexpr float B = float({float.hex(0.10000000149011612)}f);" in out.text  # rounded to float
    assert "static constexpr int C = int(0);" in out.text
    assert "C_SET = false" in out.text and "A_SET = true" in out.text
    assert [(c.name, c.index, c.value) for c in out.function_constants] == [("A", 0, True), ("B", 1, 0.1), ("C", 2, None)]


def test_unknown_function_constant_is_a_value_error():
    with pytest.raises(ValueError, match="no function constant named or indexed 'MISSING'"):
        translate.translate("constant bool A [[function_constant(0)]];", function_constants={"MISSING": 1})


def test_kernel_discovery():
    source = """
    kernel void plain(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {}
    [[kernel]] void attributed(device float* x [[buffer(2)]], threadgroup float* t [[threadgroup(1)]]) {}
    [[kernel, max_total_threads_per_threadgroup(256)]] void limited(uint i [[thread_index_in_threadgroup]]) {}
    template <typename T> kernel void tmpl(device T* x [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {}
    template [[host_name("tmpl_f")]] kernel void tmpl<float>(device float*, ushort);
    template [[host_name("tmpl_h")]] [[kernel]] decltype(tmpl<half>) tmpl<half>;
    void helper(device float* x) {}
    """
    kernels = translate.translate(textwrap.dedent(source)).kernels
    assert [(k.name, k.function, k.max_threads) for k in kernels] == [
        ("plain", "plain", 1024), ("attributed", "attributed", 1024), ("limited", "limited", 256),
        ("tmpl_f", "tmpl < float >", 1024), ("tmpl_h", "tmpl < half >", 1024)]
    assert [(p.name, p.attribute, p.index) for p in kernels[1].params] == [("x", "buffer", 2), ("t", "threadgroup", 1)]
    assert [(p.name, p.attribute) for p in kernels[4].params] == [("x", "buffer"), ("lane", "thread_index_in_simdgroup")]


def test_unsupported_parameter_attribute_is_reported_with_its_line():
    source = "\n\nkernel void k(texture2d<float> t [[texture(0)]]) {}\n"
    with pytest.raises(CompileError, match=r"<source>:3: .*\[\[texture\]\] is not supported"):
        translate.translate(source)


def test_swizzle_table_is_generated_from_its_script():
    sys.path.insert(0, str(EMULATOR_DIR / "shim" / "msl"))
    try:
        import gen_swizzles
    finally:
        sys.path.pop(0)
    assert (EMULATOR_DIR / "shim" / "msl" / "swizzles.inc").read_text() == gen_swizzles.swizzles_inc()


# ---- compiling ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features(compile_kernels, kernels_dir):
    options = dict(include_dirs=[kernels_dir / "include"], defines={"OFFSET": 4})
    with_bias = compile_kernels("features.metal", function_constants={"HAS_BIAS": True, 1: 2.0, "HALF_SCALE": 0.5}, **options)
    without = compile_kernels("features.metal", function_constants={"HAS_BIAS": False, 1: 3.0, 3: 1.0, 2: 7}, **options)
    return with_bias, without


def test_includes_defines_and_function_constants(features):
    with_bias, without = features
    x, bias = torch.arange(8, dtype=torch.float32), torch.full((8,), 0.5)
    out = torch.zeros(8)
    with_bias.dispatch("affine", {0: x, 1: bias, 2: out}, (1,), (8,))
    assert out.tolist() == [(v * 2.0 * 0.5 + 0.5) ** 2 + 4 for v in range(8)]
    without.dispatch("affine", {0: x, 2: out}, (1,), (8,))  # buffer 1 is disabled: not needed
    assert out.tolist() == [(v * 3.0) ** 2 + 4 + 1000 for v in range(8)]


def test_macro_generated_template_and_attribute_kernels(features):
    lib = features[0]
    assert sorted(lib.kernel_names) == sorted(
        ["affine", "fill_f32", "fill_f16", "constant_fill_float_3", "constant_fill_int_5", "attribute_style"])
    f32, f16 = torch.zeros(4), torch.zeros(4, dtype=torch.float16)
    lib.dispatch("fill_f32", {0: f32}, (1,), (4,))
    lib.dispatch("fill_f16", {0: f16}, (1,), (4,))
    assert f32.tolist() == f16.float().tolist() == [1.5, 2.5, 3.5, 4.5]
    ints = torch.zeros(4, dtype=torch.int32)
    lib.dispatch("constant_fill_int_5", {0: ints}, (1,), (4,))
    assert ints.tolist() == [5] * 4
    lib.dispatch("attribute_style", {0: f32}, (1,), (4,))
    assert f32.tolist() == [8.0] * 4
    with pytest.raises(emulator.KernelError, match="65 threads exceeds the kernel's max_total_threads_per_threadgroup of 64"):
        lib.dispatch("attribute_style", {0: torch.zeros(65)}, (1,), (65,))


def test_compile_errors_name_the_metal_file_and_line():
    source = "#include <metal_stdlib>\nusing namespace metal;\n\nkernel void k(device float* x [[buffer(0)]]) {\n  x[0] = undeclared;\n}\n"
    with pytest.raises(CompileError, match=r"broken\.metal:5:\d+: error: .undeclared. was not declared"):
        emulator.compile(source, filename="broken.metal")


def test_preprocessor_errors_name_the_metal_file():
    with pytest.raises(CompileError, match=r"broken\.metal:1:\d+: fatal error: missing\.h"):
        emulator.compile('#include "missing.h"\n', filename="broken.metal")


def test_bad_checks_value():
    with pytest.raises(ValueError, match="checks must be one of"):
        emulator.compile("kernel void k() {}", checks="everything")


CACHE_PROBE = r"""
import sys, torch
from mfa_torch import emulator
lib = emulator.compile("#include <metal_stdlib>\nusing namespace metal;\n"
                       "kernel void k(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = %s; }\n")
x = torch.zeros(4)
lib.dispatch("k", {0: x}, (1,), (4,))
print(x.tolist())
"""


def test_cache_is_safe_for_concurrent_processes(tmp_path):
    env = dict(os.environ, MFA_TORCH_CACHE=str(tmp_path))
    code = CACHE_PROBE % "float(i) * 3.0f"
    project = pathlib.Path(emulator.__file__).parents[2]
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=project, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert outputs == ["[0.0, 3.0, 6.0, 9.0]\n"] * 2
    assert len(list(tmp_path.glob("*.so"))) == 1  # built once, under the lock
    assert not list(tmp_path.glob("build-*"))  # no temporary leftovers


# ---- numerics that must not follow the compiler's defaults ------------------------------------------------


def test_half_rounds_after_every_operation_whatever_the_compilers_default():
    """g++ 13 made -fexcess-precision=standard the C++ default: half expressions would then be evaluated in float
    and rounded once, so the same kernel would give other results with a newer compiler. The emulator pins
    per-operation rounding with -fexcess-precision=16, and a chained half expression shows it: 1 + 2^-11 + 2^-11
    is 1 in half arithmetic (each addition is a tie, rounded to even), 1 + 2^-10 evaluated in float."""
    from mfa_torch.emulator import compiler
    assert "-fexcess-precision=16" in compiler.compiler_flags(None)
    lib = emulator.compile(textwrap.dedent("""
        #include <metal_stdlib>
        using namespace metal;
        kernel void chained(device const half* x [[buffer(0)]], device half* out [[buffer(1)]]) {
          out[0] = x[0] + x[1] + x[1];
          out[1] = x[0] * x[2] + x[1] * x[2];
        }"""))
    x = torch.tensor([1.0, 2.0 ** -11, 3.0]).half()
    out = torch.zeros(2, dtype=torch.float16)
    lib.dispatch("chained", {0: x, 1: out}, (1,), (1,))
    assert out[0].item() == 1.0
    assert out[1].item() == (x[0] * x[2] + x[1] * x[2]).item()  # each product and the sum rounded to half


# ---- the fast-math mode (fast_math=True: g++ -ffast-math, as Metal's fast math lets Apple's compiler) ------------

TIMES_ZERO = """
#include <metal_stdlib>
using namespace metal;
kernel void times_zero(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                       uint i [[thread_position_in_grid]]) {
  out[i] = x[i] * 0.0f;
}
"""


def test_fast_math_applies_to_the_kernel_code_and_is_its_own_artefact():
    """IEEE: NaN x 0 and inf x 0 are NaN. Fast math assumes neither operand exists and folds x * 0 to 0, as it may on
    Apple's compiler: the mode reaches the kernel's own expressions, and the two builds are separate cache entries."""
    x = torch.tensor([1.0, float("nan"), float("inf")])
    results = {}
    for fast_math in (False, True):
        out = torch.zeros(3)
        emulator.compile(TIMES_ZERO, fast_math=fast_math).dispatch("times_zero", {0: x, 1: out}, (1,), (3,))
        results[fast_math] = out
    assert results[False][0] == 0 and results[False][1:].isnan().all()
    assert torch.equal(results[True], torch.zeros(3))


@pytest.mark.parametrize("expression", ["-INFINITY", "NAN", "HUGE_VALF", "float(HUGE_VALH)", "float(isnan(x[i]))",
                                        "float(isinf(x[i]))", "float(isfinite(x[i]))"])
def test_fast_math_rejects_infinities_and_nan_tests_naming_the_line(expression):
    """Under fast math a compiler may assume no value is infinite or NaN (clang: naming one is undefined behaviour),
    and g++ folds isnan to false: code that relies on them has no defined meaning there, so the mode rejects it at
    compile time, with the .metal file and line. Without fast math the same code compiles."""
    source = TIMES_ZERO.replace("x[i] * 0.0f", expression)
    emulator.compile(source, filename="specials.metal")
    with pytest.raises(CompileError, match=r"(?s)specials\.metal:6.*under fast math"):
        emulator.compile(source, filename="specials.metal", fast_math=True)


def test_fast_math_keeps_the_shims_correctly_rounded_transcendentals():
    """The shim's transcendental functions round the C library's double function once. g++ -ffast-math narrows
    float(f(double(x))) to the float function f (glibc's tanhf differs in a quarter of these inputs, exp2f in some):
    the fast-math build must give the very same floats, or tolerances would depend on the host's C library."""
    source = """
    #include <metal_stdlib>
    using namespace metal;
    kernel void functions(device const float* x [[buffer(0)]], device float4* out [[buffer(1)]],
                          uint i [[thread_position_in_grid]]) {
      out[i] = float4(exp2(x[i]), exp(x[i]), log(abs(x[i]) + 0.5f), precise::tanh(x[i] * 0.1f));
    }"""
    x = torch.empty(8192).uniform_(-20, 20, generator=torch.Generator().manual_seed(3))
    outs = []
    for fast_math in (False, True):
        out = torch.zeros(8192, 4)
        lib = emulator.compile(textwrap.dedent(source), fast_math=fast_math)
        lib.dispatch("functions", {0: x, 1: out}, (8,), (1024,))
        outs.append(out)
    want = torch.stack([x.double().exp2(), x.double().exp(), (x.abs() + 0.5).double().log(), (x * 0.1).double().tanh()],
                       -1).float()
    assert torch.equal(outs[0], want)
    assert torch.equal(outs[1], outs[0])


def test_bad_fast_math_value():
    with pytest.raises(TypeError, match="fast_math must be True or False"):
        emulator.compile("kernel void k() {}", fast_math="yes")
