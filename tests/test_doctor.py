"""`python -m mfa_torch.doctor`: runs from an installed package with no test files around, prints the environment
and one line per check, exits 0 only when every check passed, and reports a failing check instead of crashing."""
import subprocess
import sys

import pytest
import torch

import mfa_torch
from mfa_torch.doctor import checks, cli, compile_variants, sweep
from mfa_torch.metal import lane_layout_self_test
from mfa_torch.metal.variants import Variant


def _doctor(cwd, *flags):
    return subprocess.run([sys.executable, "-m", "mfa_torch.doctor", *flags], cwd=cwd, capture_output=True, text=True,
                          timeout=3600)


def _summary(stdout):
    """{check name: status} from the lines after "Summary"."""
    lines = stdout.split("\nSummary", 1)[1].splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith("Please"))


def _expected_names(quick):
    route = "metal" if torch.backends.mps.is_available() else "emulator"
    return ["environment"] + [name for name, _ in checks.planned(route, quick)]


@pytest.mark.slow
@pytest.mark.emulator
def test_quick_doctor_passes_on_the_emulator_from_outside_the_checkout(tmp_path):
    result = _doctor(tmp_path, "--quick")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stdout + result.stderr
    summary = _summary(result.stdout)
    assert list(summary) == _expected_names(quick=True)
    assert set(summary.values()) == {"ok"}
    assert f"torch: {torch.__version__}" in result.stdout and f"mfa_torch: {mfa_torch.__version__}" in result.stdout
    assert "MPS executor in this build: " in result.stdout
    if not torch.backends.mps.is_available():
        assert "No GPU was used" in result.stdout
    assert result.stdout.rstrip().endswith("open an issue on the mfa_torch repository with this output (all of it).")


@pytest.mark.slow
@pytest.mark.mps
def test_full_doctor_passes_on_the_gpu(tmp_path):
    result = _doctor(tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    summary = _summary(result.stdout)
    assert list(summary) == _expected_names(quick=False) and set(summary.values()) == {"ok"}


def test_a_failing_check_gives_exit_1_and_a_failed_line(monkeypatch, capsys):
    def broken():
        raise RuntimeError("the kernel\nwrote garbage")

    monkeypatch.setattr(checks, "planned", lambda route, quick: [("fine", lambda: None), ("broken", broken),
                                                                  ("noted", lambda: "3 things")])
    assert cli.main([]) == 1
    out = capsys.readouterr().out
    summary = _summary(out)
    assert summary == {"environment": "ok", "fine": "ok", "broken": "FAILED: RuntimeError: the kernel wrote garbage",
                       "noted": "ok (3 things)"}
    assert "    RuntimeError: the kernel\nwrote garbage" in out  # the full error above the summary
    assert "1 of 4 checks FAILED." in out and cli.SEND in out


def test_an_environment_that_cannot_be_described_is_a_failed_check(monkeypatch, capsys):
    def no_sysctl(*args, **kwargs):
        raise OSError("sysctl: not found")

    monkeypatch.setattr(cli.environment, "describe", no_sysctl)
    monkeypatch.setattr(checks, "planned", lambda route, quick: [("fine", lambda: None)])
    assert cli.main([]) == 1
    assert _summary(capsys.readouterr().out) == {"environment": "FAILED: OSError: sysctl: not found", "fine": "ok"}


def test_quick_leaves_out_the_compile_check_and_keeps_every_case():
    full, quick = (dict(checks.planned("emulator", q)) for q in (False, True))
    assert "compile every planned shader variant" in full and "compile every planned shader variant" not in quick
    cases = len(sweep.ATTENTION + sweep.GEMM)
    assert len(quick) == 1 + cases and len(full) == 2 + len(sweep.DTYPES) * cases
    assert "MPS executor in this build" in dict(checks.planned("metal", True))


@pytest.mark.emulator
def test_the_compile_check_reports_every_library_that_does_not_compile(monkeypatch):
    good = Variant(lane_layout_self_test.SHADER, lane_layout_self_test.KERNEL, ())
    undeclared = Variant(lane_layout_self_test.SHADER, lane_layout_self_test.KERNEL,
                         (("simdgroup_multiply_accumulate", "no_such_builtin"),))
    misnamed = Variant(lane_layout_self_test.SHADER, "no_such_kernel", ())
    monkeypatch.setattr(compile_variants, "planned_variants", lambda: [good, undeclared, misnamed])
    log = []
    with pytest.raises(RuntimeError, match="2 of 3 shader variants do not compile .*first: lane_layout_self_test of "
                                           "lane_layout_self_test.metal with simdgroup_multiply_accumulate="):
        compile_variants.compile_all("emulator", log.append)
    text = "\n".join(log)
    assert "simdgroup_multiply_accumulate=no_such_builtin does not compile: CompileError" in text
    assert "no_such_kernel of lane_layout_self_test.metal with no defines does not compile" in text
    monkeypatch.setattr(compile_variants, "planned_variants", lambda: [good])
    assert compile_variants.compile_all("emulator", log.append) == "1 variants"


@pytest.mark.emulator
def test_the_sweep_fails_a_kernel_whose_result_is_off():
    """The same comparison as the sweep's matmul case, with the emulator route's output nudged by one part in 100."""
    case = next(c for c in sweep.GEMM if c.name.startswith("matmul"))
    off = sweep.Case(case.name, case.inputs, lambda a, b: mfa_torch.matmul(a, b) * (
        1.01 if mfa_torch.get_backend() == "emulator" else 1.0), case.differentiated)
    sweep.compare(case, torch.float16, "emulator")
    with pytest.raises(AssertionError, match=r"^output: max error .* against float64, allowed 2 x .*grad a: max"):
        sweep.compare(off, torch.float16, "emulator")
