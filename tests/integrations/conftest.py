import os

import pytest

import mfa_torch

# Integration tests build their models from configs: nothing may come from a hub.
os.environ["HF_HUB_OFFLINE"] = "1"

from test_patch import routes  # noqa: E402,F401  (the route spy fixture, shared with the patch tests)


@pytest.fixture(autouse=True)
def _unpatched():
    """enable() may patch torch.nn.functional: no test leaves it patched for the next."""
    yield
    mfa_torch.unpatch()
