import host_pins  # noqa: F401  (before torch: pins PyTorch's CPU kernels)
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run and host: CI cannot pass or fail by luck, and a failure
# reproduces with the same command. (Tests with their own settings inherit this.)
settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile("reproducible")

torch.set_num_threads(host_pins.THREADS)


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
