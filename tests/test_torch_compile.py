"""torch.compile(fullgraph=True) traces every public entry point (fake kernels, no graph breaks)."""
import pytest
import torch
import torch.nn.functional as F

import mfa_torch


def _grads(fn, *inputs):
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    return out, torch.autograd.grad(out.square().sum(), inputs)


def _check_compiled(fn, *shapes, dtype=torch.float64):
    torch.manual_seed(0)
    inputs = [torch.randn(*s, dtype=dtype, requires_grad=True) for s in shapes]
    eager_out, eager_grads = _grads(fn, *inputs)
    compiled_out, compiled_grads = _grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), *inputs)
    torch.testing.assert_close(compiled_out, eager_out)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def test_sdpa_torch_route():
    _check_compiled(lambda q, k, v: mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True),
                    (2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8))


def test_sdpa_reference_route_with_extras():
    fn = lambda q, k, v: mfa_torch.scaled_dot_product_attention(  # noqa: E731
        q, k, v, enable_gqa=True, window_size=(3, 1), softcap=4.0, return_lse=True)
    _check_compiled(fn, (2, 4, 9, 8), (2, 2, 11, 8), (2, 2, 11, 5))


def test_sdpa_dropout_draws_its_seed_inside_the_graph():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, requires_grad=True) for _ in range(3))
    fn = lambda q, k, v: mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.3, window_size=(2, 2))  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    first = compiled(q, k, v)
    torch.manual_seed(1)
    torch.testing.assert_close(compiled(q, k, v), first)  # torch.manual_seed reproduces the keep mask
    torch.manual_seed(1)
    torch.testing.assert_close(fn(q, k, v), first)  # and eager draws the same seed
    first.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_flash_attn_func():
    fn = lambda q, k, v: mfa_torch.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)  # noqa: E731
    _check_compiled(fn, (2, 9, 4, 8), (2, 6, 2, 8), (2, 6, 2, 8))


def test_flash_attn_varlen_func():
    cu_q = torch.tensor([0, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 11], dtype=torch.int32)
    fn = lambda q, k, v: mfa_torch.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 6, causal=True)  # noqa: E731
    _check_compiled(fn, (9, 2, 8), (11, 2, 8), (11, 2, 8))


def test_matmul_and_linear():
    _check_compiled(lambda a, b: mfa_torch.matmul(a, b), (3, 5, 7), (7, 4))
    _check_compiled(lambda x, w, b: mfa_torch.linear(x, w, b), (2, 3, 7), (5, 7), (5,))


def test_inductor_compiles_sdpa_with_extras_and_linear():
    """The default backend (inductor) too, once: the ops are opaque calls inside the generated code."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    fn = lambda q, k, v: mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(2, 2))  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(q, k, v), fn(q, k, v))
    x, w = torch.randn(4, 7), torch.randn(5, 7)
    torch.testing.assert_close(torch.compile(mfa_torch.linear, fullgraph=True)(x, w), F.linear(x, w))
