"""Properties of the shipped shader sources that Apple's toolchain depends on and the emulator's execution cannot see:
the text PyTorch's runtime reads, and the kernel attributes its compiler sizes registers by."""
import pytest

from mfa_torch import _C
from mfa_torch.emulator.compiler import preprocess
from mfa_torch.emulator.tokens import attribute_groups, tokenize
from mfa_torch.emulator.translate import translate
from mfa_torch.metal.shader_files import shader_dir
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
