import os
import pathlib

# PyTorch's CPU results are the tests' yardsticks (the 2x-PyTorch-error rule). Pin the kernels they come from, which
# otherwise follow the host: ATen's and oneDNN's AVX2 or AVX-512 code, MKL's code path per CPU, the thread count
# (summation orders differ with each). Set before torch is imported; tests/test_numerics.py checks they hold.
_CPU_FLAGS = next((line.split(":", 1)[1].split() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags")), []) if os.path.exists("/proc/cpuinfo") else []
if "avx2" in _CPU_FLAGS:
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("MKL_CBWR", "AVX2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
PINNED_THREADS = 2

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(PINNED_THREADS)


def pytest_collection_modifyitems(config, items):
    """Tests marked `mps` need an Apple GPU: skip them (visibly) everywhere else."""
    if torch.backends.mps.is_available():
        return
    skip = pytest.mark.skip(reason="needs an Apple GPU (MPS device)")
    for item in items:
        if item.get_closest_marker("mps") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_rng():
    """Tests that draw from torch's global generator see the same numbers on every run."""
    torch.manual_seed(0)
