"""The backend switch and route reporting."""
import os
import subprocess
import sys

import pytest
import torch

import mfa_torch
from mfa_torch import routing


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = mfa_torch.get_backend()
    yield
    mfa_torch.set_backend(previous)


def _qkv(L=5, S=6):
    return torch.randn(1, 2, L, 8), torch.randn(1, 2, S, 8), torch.randn(1, 2, S, 8)


def test_default_backend_is_auto():
    assert mfa_torch.get_backend() == "auto"


def test_set_backend_and_context_manager_restore():
    mfa_torch.set_backend("reference")
    with mfa_torch.backend("auto"):
        assert mfa_torch.get_backend() == "auto"
    assert mfa_torch.get_backend() == "reference"


def test_context_manager_restores_after_an_exception():
    with pytest.raises(KeyError):
        with mfa_torch.backend("reference"):
            raise KeyError
    assert mfa_torch.get_backend() == "auto"


@pytest.mark.parametrize("bad", ["mps", "", None, 3])
def test_unknown_backend_names_the_choices(bad):
    with pytest.raises(ValueError, match="'auto', 'reference', 'flex', 'sdpa-mask', 'metal', 'emulator'"):
        mfa_torch.set_backend(bad)


def test_environment_variable_selects_the_backend():
    code = "import mfa_torch; print(mfa_torch.get_backend())"
    env = dict(os.environ, MFA_TORCH_BACKEND="reference")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "reference"


def test_bad_environment_variable_is_a_clear_error():
    code = "import mfa_torch, torch; mfa_torch.matmul(torch.ones(2, 2), torch.ones(2, 2))"
    env = dict(os.environ, MFA_TORCH_BACKEND="gpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "environment variable MFA_TORCH_BACKEND" in result.stderr


def test_explain_names_torch_route_and_the_reason_for_the_reference_route():
    q, k, v = _qkv()
    assert "torch-sdpa" in mfa_torch.explain(q, k, v, is_causal=True)
    text = mfa_torch.explain(q, k, v, window_size=(2, 0), softcap=3.0)
    assert "reference" in text and "window_size" in text and "softcap" in text


def test_explain_validates_like_the_call():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="window_size"):
        mfa_torch.explain(q, k, v, window_size=(-3, 0))


def test_metal_backend_on_cpu_tensors_is_a_clear_error():
    q, k, v = _qkv()
    with mfa_torch.backend("metal"):
        with pytest.raises(ValueError, match='backend "metal" needs tensors on the "mps" device'):
            mfa_torch.scaled_dot_product_attention(q, k, v)
        with pytest.raises(ValueError, match="mps"):
            mfa_torch.matmul(torch.ones(2, 2), torch.ones(2, 2))


def test_emulator_backend_routes_attention_to_the_metal_kernels_and_says_why_not_for_float64(monkeypatch):
    monkeypatch.setattr(routing, "_warned", set())  # the warning is once per process
    q, k, v = _qkv()
    with mfa_torch.backend("emulator"):
        assert "route: emulator" in mfa_torch.explain(q, k, v)
        with pytest.warns(UserWarning, match="do not implement torch.float64"):
            text = mfa_torch.explain(q.double(), k.double(), v.double())
    assert "route: torch-sdpa" in text  # float64 cannot take the Metal kernels; PyTorch covers the call


def test_emulator_backend_on_a_non_cpu_device_is_a_clear_error():
    q, k, v = (t.to("meta") for t in _qkv())
    with mfa_torch.backend("emulator"):
        with pytest.raises(ValueError, match='backend "emulator" runs CPU tensors only'):
            mfa_torch.scaled_dot_product_attention(q, k, v)


def test_reference_backend_gives_the_same_result_as_auto():
    torch.manual_seed(0)
    q, k, v = _qkv(L=7, S=9)
    with mfa_torch.backend("reference"):
        ref = mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(3, 3))
    torch.testing.assert_close(ref, mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(3, 3)))


@pytest.mark.emulator
@pytest.mark.parametrize("forward_backend,backward_backend", [("emulator", "auto"), ("reference", "emulator")])
def test_backward_runs_on_the_backend_its_forward_ran_on(monkeypatch, forward_backend, backward_backend):
    """autograd often runs the backward after the `with backend(...)` block of the forward has ended. It must take
    the forward's kernels: the emulator's forward with PyTorch's backward (which recomputes the scores with other
    roundings) gave gradients off by 7% at scores near 1e3, differently on different hosts. GEMM likewise."""
    from mfa_torch.metal import emulator_executor
    launched = []
    run_plan = emulator_executor.run_plan
    monkeypatch.setattr(emulator_executor, "run_plan",
                        lambda plan, *a, **kw: (launched.extend(x.kernel for x in plan.launches), run_plan(plan, *a, **kw)))
    q, k, v = (t.requires_grad_() for t in _qkv())
    a, b = torch.randn(3, 5, requires_grad=True), torch.randn(5, 4)
    with mfa_torch.backend(forward_backend):
        out = mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(2, 1))
        product = mfa_torch.matmul(a, b)
    with mfa_torch.backend(backward_backend):
        grads = torch.autograd.grad((out.sum(), product.sum()), (q, k, v, a))
    on_emulator = forward_backend == "emulator"
    assert ("attention_backward_dq" in launched) == on_emulator and ("gemm" in launched) == on_emulator
    with mfa_torch.backend(forward_backend):  # the same calls with the backward inside the block: bit for bit
        out = mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(2, 1))
        product = mfa_torch.matmul(a, b)
        want = torch.autograd.grad((out.sum(), product.sum()), (q, k, v, a))
    assert all(torch.equal(g, w) for g, w in zip(grads, want))
    assert mfa_torch.get_backend() == "auto"
