"""mfa_torch.patch()/unpatch(): what gets replaced and restored, where calls go, and thread safety.

Oracles: PyTorch's own functions captured before any patch, and the fp64 oracle of tests/oracle.py.
"""
import builtins
import importlib
import sys
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import mfa_torch
from mfa_torch import routing

from oracle import attention_fp64, linear_fp64, matmul_fp64

patch_module = importlib.import_module("mfa_torch.patch")  # the module; mfa_torch.patch is the function

ORIGINAL_SDPA, ORIGINAL_LINEAR, ORIGINAL_MATMUL = F.scaled_dot_product_attention, F.linear, torch.matmul


@pytest.fixture(autouse=True)
def _restored():
    mfa_torch.unpatch()
    yield
    mfa_torch.unpatch()
    assert (F.scaled_dot_product_attention, F.linear, torch.matmul) == (ORIGINAL_SDPA, ORIGINAL_LINEAR,
                                                                         ORIGINAL_MATMUL)


@pytest.fixture
def routes(monkeypatch):
    """Calls that reached mfa_torch's route decision, as (device type, what PyTorch's SDPA lacks for the
    call: a tuple for attention, None for GEMM, the route taken)."""
    seen = []
    choose = routing.choose

    def spy(device, torch_lacks=None, *args, **kwargs):
        route = choose(device, torch_lacks, *args, **kwargs)
        seen.append((device.type, None if torch_lacks is None else tuple(torch_lacks), route.name))
        return route

    monkeypatch.setattr(routing, "choose", spy)
    return seen


class Spy:
    """Stands in for a torch function before patching, so the patch captures it as "the original"."""

    def __init__(self, function):
        self.function, self.calls = function, []
        self.__name__ = function.__name__

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.function(*args, **kwargs)


def qkv(device="cpu", requires_grad=False):
    g = torch.Generator().manual_seed(0)
    shapes = ((2, 4, 9, 16), (2, 2, 11, 16), (2, 2, 11, 8))
    return [torch.randn(s, generator=g).to(device).requires_grad_(requires_grad) for s in shapes]


def test_patch_reroutes_sdpa_and_unpatch_restores_the_original(routes):
    q, k, v = qkv()
    mask = torch.rand(9, 11, generator=torch.Generator().manual_seed(1)) > 0.3
    mfa_torch.patch()
    assert F.scaled_dot_product_attention is not ORIGINAL_SDPA
    assert F.linear is ORIGINAL_LINEAR and torch.matmul is ORIGINAL_MATMUL  # opt-in only
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert routes == [("cpu", (), "torch-sdpa")]
    ref, _ = attention_fp64(q, k, v, mask=mask)
    torch.testing.assert_close(out, ref.float(), rtol=0, atol=1e-5)
    mfa_torch.unpatch()
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA


def test_keyword_arguments_and_gradients_match_torch(routes):
    q, k, v = qkv(requires_grad=True)
    mfa_torch.patch()
    # diffusers' dispatcher passes every argument by keyword
    out = F.scaled_dot_product_attention(query=q, key=k, value=v, is_causal=True, scale=0.3, enable_gqa=True)
    assert routes == [("cpu", (), "torch-sdpa")]
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = ORIGINAL_SDPA(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_explain_names_the_route_of_a_patched_call():
    q, k, v = qkv()
    mfa_torch.patch()
    text = F.scaled_dot_product_attention.explain(q, k, v, is_causal=True, enable_gqa=True)
    assert "mfa_torch.scaled_dot_product_attention" in text
    assert mfa_torch.explain(q, k, v, is_causal=True, enable_gqa=True) in text
    meta = [t.to("meta") for t in (q, k, v)]
    assert "original function (tensors on meta" in F.scaled_dot_product_attention.explain(*meta, enable_gqa=True)


def test_context_manager_restores_the_previous_state():
    with mfa_torch.patch() as state:
        assert state is not None
        patched_sdpa = F.scaled_dot_product_attention
        assert patched_sdpa is not ORIGINAL_SDPA
        with mfa_torch.patch(linear=True, matmul=True):
            assert F.scaled_dot_product_attention is patched_sdpa  # already patched: left as it is
            assert F.linear is not ORIGINAL_LINEAR and torch.matmul is not ORIGINAL_MATMUL
        assert F.scaled_dot_product_attention is patched_sdpa
        assert F.linear is ORIGINAL_LINEAR and torch.matmul is ORIGINAL_MATMUL
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA


def test_context_manager_restores_after_an_exception():
    with pytest.raises(KeyError):
        with mfa_torch.patch(matmul=True):
            raise KeyError
    assert torch.matmul is ORIGINAL_MATMUL


def test_patch_and_unpatch_are_idempotent():
    mfa_torch.patch()
    first = F.scaled_dot_product_attention
    mfa_torch.patch()
    assert F.scaled_dot_product_attention is first
    assert first.__wrapped__ is ORIGINAL_SDPA  # never a wrapper around a wrapper
    mfa_torch.unpatch()
    mfa_torch.unpatch()
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA


def test_unsupported_calls_reach_the_original_unchanged(monkeypatch, routes):
    spy = Spy(ORIGINAL_SDPA)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    mfa_torch.patch()
    meta = [t.to("meta") for t in qkv()]
    out = F.scaled_dot_product_attention(*meta, dropout_p=0.0, enable_gqa=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 9, 8)
    assert len(spy.calls) == 1 and spy.calls[0][0][0] is meta[0] and routes == []
    # on CPU mfa_torch takes the call, and its implementation never calls torch.nn.functional's function
    F.scaled_dot_product_attention(*qkv(), enable_gqa=True)
    assert len(spy.calls) == 1 and routes == [("cpu", (), "torch-sdpa")]
    mfa_torch.unpatch()
    assert F.scaled_dot_product_attention is spy


def test_tensor_subclasses_and_integer_tensors_reach_the_original(routes):
    class Tagged(torch.Tensor):
        pass

    q, k, v = (t.as_subclass(Tagged) for t in qkv())
    mfa_torch.patch(matmul=True, linear=True)
    assert isinstance(F.scaled_dot_product_attention(q, k, v, enable_gqa=True), Tagged)
    ints = torch.arange(6).reshape(2, 3)
    assert torch.equal(torch.matmul(ints, ints.T), ORIGINAL_MATMUL(ints, ints.T))
    out = torch.empty(2, 2)
    a = torch.randn(2, 3)
    assert torch.matmul(a, a.T, out=out) is out
    assert routes == []
    assert "out= given" in torch.matmul.explain(a, a.T, out=out)


def test_linear_and_matmul_patches_take_mfa_torch_without_recursion(routes):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 4, 5, generator=g), torch.randn(5, 6, generator=g)
    w, bias = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    with mfa_torch.patch(linear=True, matmul=True):
        # mfa_torch's reference GEMM kernel calls torch.matmul itself: inside a patched call it gets torch's
        torch.testing.assert_close(torch.matmul(a, b), matmul_fp64(a, b).float(), rtol=0, atol=1e-5)
        assert routes == [("cpu", None, "reference")]
        torch.testing.assert_close(F.linear(a, w, bias), linear_fp64(a, w, bias).float(), rtol=0, atol=1e-5)
        assert routes == [("cpu", None, "reference")] * 2
        assert "mfa_torch.matmul, route: reference" in torch.matmul.explain(a, b)


def test_patched_matmul_inside_mfa_attention_kernels(routes):
    """mfa_torch's own reference attention (a sliding window: not torch's SDPA) calls torch.matmul; with
    matmul patched it must still give the right answer and not recurse."""
    q, k, v = qkv(requires_grad=True)
    with mfa_torch.patch(matmul=True), mfa_torch.backend("reference"):
        out = mfa_torch.scaled_dot_product_attention(q, k, v, enable_gqa=True, window_size=(2, 3))
        out.sum().backward()
    assert routes[0] == ("cpu", ("window_size",), "reference")
    ref, _ = attention_fp64(q, k, v, window=(2, 3))
    torch.testing.assert_close(out, ref.float(), rtol=0, atol=1e-5)
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_modules_that_look_the_function_up_at_call_time_see_the_patch(routes):
    """torch's own nn.MultiheadAttention calls torch.nn.functional's global at call time, like diffusers and
    transformers do."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).train()  # training: no fused fast path
    x = torch.randn(2, 7, 16)
    expected, _ = mha(x, x, x, need_weights=False)
    with mfa_torch.patch():
        got, _ = mha(x, x, x, need_weights=False)
    assert routes == [("cpu", (), "torch-sdpa")]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_concurrent_patching_never_stacks_wrappers(monkeypatch):
    """Threads patching, unpatching and calling at once: every call gives torch's answer, and afterwards the
    patched function wraps the original exactly once."""
    def slow_getattr(*args):  # widen the windows between reading and replacing attributes, to provoke races
        time.sleep(0.0003)
        return builtins.getattr(*args)

    monkeypatch.setattr(patch_module, "getattr", slow_getattr, raising=False)  # shadows the builtin there
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    q, k, v = qkv()
    expected = ORIGINAL_SDPA(q, k, v, enable_gqa=True)
    errors, start = [], threading.Barrier(8)

    def worker(i):
        try:
            start.wait()
            for n in range(60):
                if i % 4 == 0:
                    mfa_torch.patch()
                elif i % 4 == 1:
                    mfa_torch.unpatch()
                elif i % 4 == 2:
                    with mfa_torch.patch(matmul=n % 2 == 0):
                        pass
                else:
                    got = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                    if not torch.allclose(got, expected, rtol=0, atol=1e-6):
                        errors.append("wrong result")
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    mfa_torch.patch()
    assert F.scaled_dot_product_attention.__wrapped__ is ORIGINAL_SDPA
    assert "attention" in patch_module._installed
    mfa_torch.unpatch()
    assert torch.matmul is ORIGINAL_MATMUL and F.scaled_dot_product_attention is ORIGINAL_SDPA


def test_unpatch_leaves_a_later_replacement_in_place():
    mfa_torch.patch()
    mine = lambda *args, **kwargs: None  # noqa: E731
    F.scaled_dot_product_attention = mine
    try:
        with pytest.warns(UserWarning, match="replaced after mfa_torch patched it"):
            mfa_torch.unpatch()
        assert F.scaled_dot_product_attention is mine
    finally:
        F.scaled_dot_product_attention = ORIGINAL_SDPA
