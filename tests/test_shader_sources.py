"""Properties of the shipped shader sources that Apple's toolchain depends on and the emulator's execution cannot see:
the text PyTorch's runtime reads, and the kernel attributes its compiler sizes registers by."""
import pytest

from mfa_torch import _C
from mfa_torch.emulator.compiler import preprocess
from mfa_torch.emulator.tokens import attribute_groups, tokenize
from mfa_torch.emulator.translate import translate
from mfa_torch.metal.shader_files import shader_dir
from mfa_torch.metal import variants
from mfa_torch.metal.variants import planned_launches

SHADERS = sorted(p.name for p in shader_dir().glob("*.metal"))
SOURCES = sorted(p.name for p in shader_dir().iterdir() if p.suffix in (".metal", ".h"))


def non_ascii(text):
    """(line, character) of every character outside 7-bit ASCII."""
    return [(number, char) for number, line in enumerate(text.splitlines(), 1) for char in line if ord(char) > 127]


def assert_ascii(text, name):
    found = non_ascii(text)
    assert not found, f"{name}: not ASCII: " + ", ".join(f"line {line} {char!r} (U+{ord(char):04X})" for line, char in found)


# PyTorch hands the source to Metal as an NSString made with NSASCIIStringEncoding: one byte outside ASCII and the
# string is nil, so the library fails to compile on the first launch with an error that names no line.
@pytest.mark.parametrize("name", SOURCES)
def test_shader_files_are_ascii(name):
    assert_ascii((shader_dir() / name).read_text(encoding="utf-8", errors="surrogateescape"), name)


@pytest.mark.parametrize("shader", SHADERS)
def test_expanded_shader_sources_are_ascii(shader):
    """What the MPS executor hands PyTorch: the .metal file with the project's headers inlined."""
    assert_ascii(_C.expanded_shader_source(shader), f"{shader} (expanded)")


def kernel_attributes(text):
    """{kernel name: names of the [[attributes]] in front of it} of every `kernel void name(...)` in a source."""
    tokens = tokenize(text)
    found = {}
    for i, token in enumerate(tokens):
        if token.kind != "ident" or token.text != "kernel":
            continue
        assert tokens[i + 1].text == "void", f"{token.file}:{token.line}: write kernels as `kernel void name(`"
        start = i
        while start > 0 and tokens[start - 1].text not in (";", "{", "}"):
            start -= 1
        found[tokens[i + 2].text] = {name for name, _, _ in attribute_groups(tokens[start:i])}
    return found


@pytest.mark.parametrize("shader", SHADERS)
def test_every_kernel_declares_its_max_total_threads_per_threadgroup(shader):
    """The attribute tells Apple's compiler how many threads share the register file, so it need not assume 1024."""
    kernels = kernel_attributes((shader_dir() / shader).read_text())
    assert kernels, f"{shader} defines no kernel"
    missing = [name for name, attributes in kernels.items() if "max_total_threads_per_threadgroup" not in attributes]
    assert not missing, f"{shader}: kernels without [[max_total_threads_per_threadgroup(N)]]: {missing}"


def test_max_total_threads_per_threadgroup_is_the_plans_threadgroup_size():
    """Equal, not just at least: fewer threads than the attribute waste the registers the compiler set aside; more
    fail the dispatch (the emulator rejects that launch too)."""
    planned = {}  # (shader, defines) -> {kernel: {threads per threadgroup}}
    for launch in planned_launches():
        x, y, z = launch.threads_per_threadgroup
        key = (launch.shader, tuple(tuple(d) for d in launch.defines))
        planned.setdefault(key, {}).setdefault(launch.kernel, set()).add(x * y * z)
    for (shader, defines), kernels in planned.items():
        source = _C.expanded_shader_source(shader)
        declared = {k.name: k.max_threads for k in translate(preprocess(source, shader, dict(defines), [])).kernels}
        for kernel, threads in kernels.items():
            assert threads == {declared[kernel]}, (f"{shader} {dict(defines)}: {kernel} is launched with {threads} "
                                                   f"threads per threadgroup, declares {declared[kernel]}")


# The code each score feature adds to the attention kernels: a call or a read no other part of them makes.
_FEATURE_CODE = {variants.SOFTCAP: "precise::tanh(", variants.ALIBI: "alibi[", variants.DROPOUT: "mfa_dropout_keep(counter"}


@pytest.mark.parametrize("features", variants.SCORE_FEATURES)
def test_score_features_are_compiled_into_a_variant_only_when_switched_on(features):
    """A feature that is off costs nothing: the planner's MFA_SCORE_FEATURES leaves its code out of the variant's
    source (no branch on the params at run time), and a feature that is on is in every fused kernel that scores."""
    problem = variants.attention_problem("apple9", score_features=features)
    launches = [launch for plan in variants.attention_plans(problem) for launch in plan.launches
                if launch.kernel in ("attention_forward", "attention_backward_dq", "attention_backward_dkdv")]
    assert {launch.kernel for launch in launches} == {"attention_forward", "attention_backward_dq",
                                                      "attention_backward_dkdv"}
    for launch in launches:
        defines = dict(launch.defines)
        assert defines["MFA_SCORE_FEATURES"] == str(features)
        text = preprocess(_C.expanded_shader_source(launch.shader), launch.shader, defines, [])
        for bit, code in _FEATURE_CODE.items():
            assert (code in text) == bool(features & bit), (launch.kernel, features, code)


@pytest.mark.parametrize("sinks", [False, True])
def test_sinks_are_compiled_in_once_per_row_only_when_the_call_has_them(sinks):
    """Unsplit, the forward adds the sink; split-KV, only the combine does (each split's stats are partial)."""
    def has(launch, code):
        return code in preprocess(_C.expanded_shader_source(launch.shader), launch.shader, dict(launch.defines), [])

    (whole,) = _C.plan_attention_forward(variants.attention_problem("apple9", sinks=sinks)).launches
    split, combine = _C.plan_attention_forward(
        variants.attention_problem("apple9", q_len=1, kv_len=4096, sinks=sinks)).launches
    assert (whole.kernel, split.kernel, combine.kernel) == ("attention_forward",) * 2 + ("attention_combine",)
    assert has(whole, "attention_add_sink(row_max") == sinks
    assert not has(split, "attention_add_sink(row_max")
    assert has(combine, "sinks[group.y]") == sinks
