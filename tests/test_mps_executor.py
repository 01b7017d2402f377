"""The MPS executor on Linux: its C++ type-checks against torch's headers (it is compiled for real only on macOS),
and the shader sources it hands PyTorch's Metal compiler are self-contained (no include path at runtime)."""
import os
import pathlib
import re
import runpy
import subprocess
import sys
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

import mfa_torch
from mfa_torch import _C, emulator
from mfa_torch.metal.shader_files import shader_dir
from mfa_torch.metal.variants import planned_variants
from test_portable_cpp import PORTABLE_SOURCES
from torch_headers import torch_headers

ROOT = pathlib.Path(__file__).resolve().parents[1]
MPS_SOURCES = sorted((ROOT / "csrc" / "mps").glob("*.cpp"))
# The few Darwin names torch's MPS headers use (its README.md); a Mac has the real ones.
DARWIN_HEADERS = [] if sys.platform == "darwin" else [f"-I{ROOT / 'tests' / 'darwin_headers'}"]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_under_test")  # defines, does not build


def _type_check(source, torch_include_dirs, macros=(("MFA_TORCH_WITH_MPS", "1"),)):
    flags = ["-std=c++20", "-fsyntax-only", *(f"-D{name}={value}" for name, value in macros), f"-I{ROOT / 'csrc'}",
             f"-I{ROOT / 'shaders'}", f"-I{sysconfig.get_paths()['include']}", *DARWIN_HEADERS]
    result = subprocess.run(["g++", *flags, *(f"-I{p}" for p in torch_include_dirs), str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("source", MPS_SOURCES, ids=lambda p: p.name)
def test_mps_executor_sources_type_check_against_torch_headers(source):
    _type_check(source, include_paths())


# The oldest torch the package claims (setup.py's requirement) and the C++ sources and macros of each build.
OLDEST_TORCH = re.search(r">=\s*([0-9.]+)", SETUP["TORCH_REQUIREMENT"]).group(1)
# The macOS build's sources that include torch's headers: the rest of csrc/ includes none (tests/test_portable_cpp.py
# builds it without torch), and the other builds compile a subset of the macOS build's code (no MFA_TORCH_WITH_MPS).
MACOS_BUILD = SETUP["extension_settings"]("darwin")
BUILDS = [pytest.param(ROOT / source, MACOS_BUILD["define_macros"], id=str(pathlib.Path(source).relative_to("csrc")))
          for source in MACOS_BUILD["sources"] if source.endswith(".cpp") and ROOT / source not in PORTABLE_SOURCES]


@pytest.fixture(scope="module")
def oldest_torch_include_dirs(request, tmp_path_factory):
    """The headers of the oldest supported torch's macOS wheel, downloaded once into $MFA_TORCH_HEADERS_CACHE (or
    pytest's cache directory)."""
    cache = os.environ.get("MFA_TORCH_HEADERS_CACHE")
    if not cache:
        pytest_cache = getattr(request.config, "cache", None)
        cache = pytest_cache.mkdir("torch_headers") if pytest_cache else tmp_path_factory.mktemp("torch_headers")
    try:
        include = torch_headers(OLDEST_TORCH, pathlib.Path(cache))
    except RuntimeError as error:
        pytest.fail(f"{error}\nFetch them elsewhere with `python tests/torch_headers.py {OLDEST_TORCH} DIR` and set "
                    "MFA_TORCH_HEADERS_CACHE=DIR", pytrace=False)
    return [include, include / "torch" / "csrc" / "api" / "include"]


@pytest.mark.slow
@pytest.mark.parametrize("source, macros", BUILDS)
def test_the_extension_type_checks_against_the_oldest_supported_torch(source, macros, oldest_torch_include_dirs):
    """The C++ of the macOS build (the executor against MetalShaderLibrary) against the headers of the torch release
    install_requires names as the oldest; the .mm files need Apple's compiler."""
    _type_check(source, oldest_torch_include_dirs, macros)


def test_the_objective_c_part_stays_tiny():
    """Only what needs the Metal API itself is Objective-C++ (no compiler here checks it): asking the device for its
    GPU family, and building the compile options (safe math) of mfa_torch's libraries."""
    objc = sorted((ROOT / "csrc" / "mps").glob("*.mm"))
    assert [p.name for p in objc] == ["compile_options.mm", "gpu_family.mm"]
    for source in objc:
        assert len(source.read_text().splitlines()) <= 30, source.name


def test_linux_builds_have_no_mps_executor():
    assert _C.has_mps_executor() == (sys.platform == "darwin")
    assert not hasattr(_C, "run_plan_on_mps") or sys.platform == "darwin"


SHADERS = sorted(p.name for p in shader_dir().glob("*.metal"))


_FEATURES = {"MFA_MASK_KIND": "2", "MFA_MASK_GRAD": "1", "MFA_SPLIT_KV": "1", "MFA_SPLIT_K": "1",
             "MFA_COUNT_TILES": "1", "MFA_SCORE_FEATURES": "7", "MFA_SINKS": "1"}


def _richest_variant(shader):
    """The planned variant of a shader with the most features switched on (mask, split, tile count, mask
    gradient), and every kernel the planners launch from that library."""
    variants = [v for v in planned_variants() if v.shader == shader]
    assert variants, f"no planned variant compiles {shader}: add a plan that launches it to mfa_torch.metal.variants"
    richest = max(variants, key=lambda v: sum(v.define_dict.get(name) == on for name, on in _FEATURES.items()))
    return richest.defines, sorted(v.kernel for v in variants if v.defines == richest.defines)


@pytest.mark.emulator
@pytest.mark.parametrize("shader", SHADERS)
def test_expanded_sources_are_self_contained(shader):
    """What the MPS executor compiles: the project's headers inlined once, so PyTorch's runtime compiler (which has
    no include path) sees every definition. The emulator compiles the same text with no include directories."""
    defines, kernels = _richest_variant(shader)
    text = _C.expanded_shader_source(shader)
    assert '#include "' not in text and "#pragma once" not in text
    assert text.count("struct AttentionParams {") <= 1
    library = emulator.compile(text, defines=dict(defines), filename=shader)
    assert set(kernels) <= set(library.kernel_names)


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
