"""Every script in examples/ runs to completion in its tiny default form (CI runs them all)."""
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            env={"HF_HUB_OFFLINE": "1", **os.environ})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip(), "an example should say what it did"
