"""Installing mfa_torch the ways a user would: a wheel installed outside the checkout finds its shaders and runs; the
build explains a missing torch; macOS builds target arm64 on macOS 14."""
import os
import pathlib
import re
import runpy
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_under_test")  # defines, does not build

ONE_CALL = """
import pathlib, sys
import torch
import mfa_torch
from mfa_torch.metal.shader_files import shader_dir
site = pathlib.Path(sys.argv[1]).resolve()
assert site in pathlib.Path(mfa_torch.__file__).resolve().parents, mfa_torch.__file__
assert site in shader_dir().resolve().parents, shader_dir()
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 2, 5, 16, generator=g) for _ in range(3))
with mfa_torch.backend("emulator"):
    out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True)
q, k, v = q.double(), k.double(), v.double()
scores = (q @ k.transpose(-1, -2)) / 4.0
scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
expected = torch.softmax(scores, -1) @ v
error = (out.double() - expected).abs().max().item()
assert error < 1e-5, error
print("ok", error)
"""


def _source_tree(destination):
    """What a fresh clone holds: the files git tracks (and new ones not ignored), no build outputs."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_finds_its_shaders_and_runs(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test builds the wheel from the git checkout: run it in a clone with git installed")
    source = tmp_path / "source"
    _source_tree(source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("mfa_torch-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    shutil.rmtree(source)  # nothing may still point into the tree the wheel was built from
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", ONE_CALL, str(site)], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("ok")


def test_a_build_without_torch_says_to_install_torch_first(tmp_path):
    blocked = "import runpy, sys; sys.modules['torch'] = None; runpy.run_path('setup.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", blocked, "--version"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "install torch first" in message[0] and "--no-build-isolation" in message[0]


def test_macos_builds_are_arm64_for_macos_14_with_the_mps_executor():
    settings = SETUP["extension_settings"]("darwin")
    assert ("MFA_TORCH_WITH_MPS", "1") in settings["define_macros"]
    assert any(s.endswith(".mm") for s in settings["sources"])
    for args in (settings["extra_compile_args"], settings["extra_link_args"]):
        assert "-mmacosx-version-min=14.0" in args and args[args.index("-arch") + 1] == "arm64"
    assert "Metal" in settings["extra_link_args"]
    linux = SETUP["extension_settings"]("linux")
    assert not any("mps" in s for s in linux["sources"]) and linux["define_macros"] == []


@pytest.mark.parametrize("given, expected", [(None, "14.0"), ("10.9", "14.0"), ("13.6", "14.0"), ("15.2", "15.2")])
def test_the_macos_deployment_target_is_at_least_14(given, expected):
    environ = {} if given is None else {"MACOSX_DEPLOYMENT_TARGET": given}
    SETUP["darwin_environment"](environ)
    assert environ == {"MACOSX_DEPLOYMENT_TARGET": expected, "ARCHFLAGS": "-arch arm64"}


def test_the_build_and_the_install_ask_for_the_same_torch():
    pyproject = (ROOT / "pyproject.toml").read_text()
    build_requires = re.search(r"^requires = \[(.*)\]$", pyproject, re.M).group(1)
    assert f'"{SETUP["TORCH_REQUIREMENT"]}"' in build_requires
