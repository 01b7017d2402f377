"""The MPS executor on Linux: its C++ type-checks against torch's headers (it is compiled for real only on macOS),
and the shader sources it hands PyTorch's Metal compiler are self-contained (no include path at runtime)."""
import pathlib
import subprocess
import sys
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

import mfa_torch
from mfa_torch import _C, emulator
from mfa_torch.metal.shader_files import shader_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
MPS_SOURCES = sorted((ROOT / "csrc" / "mps").glob("*.cpp"))


@pytest.mark.parametrize("source", MPS_SOURCES, ids=lambda p: p.name)
def test_mps_executor_sources_type_check_against_torch_headers(source):
    flags = ["-std=c++20", "-fsyntax-only", "-DMFA_TORCH_WITH_MPS", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'shaders'}",
             f"-I{sysconfig.get_paths()['include']}"] + [f"-I{p}" for p in include_paths()]
    result = subprocess.run(["g++", *flags, str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_objective_c_part_stays_tiny():
    """Only what needs the Metal API itself (asking the device for its GPU family) is Objective-C++."""
    objc = sorted((ROOT / "csrc" / "mps").glob("*.mm"))
    assert [p.name for p in objc] == ["gpu_family.mm"]
    assert len(objc[0].read_text().splitlines()) <= 30


def test_linux_builds_have_no_mps_executor():
    assert _C.has_mps_executor() == (sys.platform == "darwin")
    assert not hasattr(_C, "run_plan_on_mps") or sys.platform == "darwin"


SHADERS = sorted(p.name for p in shader_dir().glob("*.metal"))


def _planned_launches():
    """Launches of plans that use every kernel: attention forward with a mask, split-KV and the tile counter; the
    backward with a mask gradient; GEMM with split-K."""
    attention = _C.AttentionProblem()
    for name, value in dict(dtype="float16", batch=1, q_heads=8, kv_heads=2, q_len=2, kv_len=4096, head_dim=64,
                            value_dim=48, mask="float32", mask_strides=[0, 0, 4096, 1], count_tiles=True).items():
        setattr(attention, name, value)
    gemm = _C.GemmProblem()
    for name, value in dict(dtype="bfloat16", batch=1, m=8, n=8, k=4096, a_strides=[0, 4096, 1],
                            b_strides=[0, 8, 1], has_bias=True).items():
        setattr(gemm, name, value)
    plans = [_C.plan_attention_forward(attention), _C.plan_attention_backward(attention, True), _C.plan_gemm(gemm)]
    return {launch.shader: launch for plan in plans for launch in plan.launches}


@pytest.mark.emulator
@pytest.mark.parametrize("shader", SHADERS)
def test_expanded_sources_are_self_contained(shader):
    """What the MPS executor compiles: the project's headers inlined once, so PyTorch's runtime compiler (which has
    no include path) sees every definition. The emulator compiles the same text with no include directories."""
    launches = _planned_launches()
    assert shader in launches, f"no plan in this test launches {shader}: add one"
    text = _C.expanded_shader_source(shader)
    assert '#include "' not in text and "#pragma once" not in text
    assert text.count("struct AttentionParams {") <= 1
    library = emulator.compile(text, defines=dict(launches[shader].defines), filename=shader)
    assert launches[shader].kernel in library.kernel_names


def test_shader_directory_is_found_and_missing_files_are_clear_errors():
    assert (shader_dir() / "attention_params.h").is_file()
    with pytest.raises(RuntimeError, match="cannot read shader file"):
        _C.expanded_shader_source("no_such_shader.metal")
    assert mfa_torch.__version__


@pytest.mark.parametrize("op", ["attention_forward", "attention_backward", "gemm"])
def test_every_op_has_a_kernel_for_the_mps_dispatch_key(op):
    """On MPS tensors the ops run their kernel, which takes the Metal route (csrc/mps) when the build has it."""
    import torch
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mfa::{op}", "MPS")
