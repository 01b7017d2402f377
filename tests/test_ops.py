"""The op layer: schemas, fake kernels, autograd registration and torch.compile, checked by opcheck."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mfa_torch  # noqa: F401  (registers the ops)


def _qkv(B=2, Hq=4, Hk=2, L=9, S=11, E=8, Ev=6, dtype=torch.float32, grad=True):
    make = lambda *shape: torch.randn(*shape, dtype=dtype, requires_grad=grad)  # noqa: E731
    return make(B, Hq, L, E), make(B, Hk, S, E), make(B, Hk, S, Ev)


def _forward_args(q, k, v, mask=None, alibi=None, cu_q=None, cu_k=None, max_q=None, max_k=None, scale=0.3,
                  window=(-1, -1), bottom_right=False, softcap=0.0, dropout_p=0.0, seed=0):
    return (q, k, v, mask, alibi, cu_q, cu_k, q.shape[2] if max_q is None else max_q,
            k.shape[2] if max_k is None else max_k, scale, window[0], window[1], bottom_right, softcap, dropout_p,
            torch.tensor([seed, 0]) if dropout_p > 0 else None)


ATTENTION_CASES = {
    "plain": lambda: _forward_args(*_qkv()),
    "causal_bottom_right_window": lambda: _forward_args(*_qkv(), window=(3, 0), bottom_right=True),
    "bool_mask_broadcast": lambda: _forward_args(*_qkv(), mask=torch.rand(1, 1, 9, 11) > 0.3),
    "float_mask_with_grad": lambda: _forward_args(*_qkv(), mask=torch.randn(2, 1, 9, 1, requires_grad=True)),
    "alibi_softcap": lambda: _forward_args(*_qkv(), alibi=torch.rand(1, 4), softcap=5.0),
    "dropout": lambda: _forward_args(*_qkv(), dropout_p=0.25, seed=1234),
    "varlen": lambda: _forward_args(*_qkv(B=1, L=12, S=10), cu_q=torch.tensor([0, 5, 12], dtype=torch.int32),
                                    cu_k=torch.tensor([0, 3, 10], dtype=torch.int32), max_q=7, max_k=7,
                                    window=(-1, 0), bottom_right=True),
    "half": lambda: _forward_args(*_qkv(dtype=torch.float16)),
    "empty_keys": lambda: _forward_args(*_qkv(S=0)),
    "block_mask": lambda: _forward_args(*_qkv()) + (None,) + _block_mask(),
    "paged_kv": lambda: _paged(),
}


def _paged():
    """Two sequences reading 4-row pages of a pool of 5 through a block table, one starting at cache position 1, and
    two key splits (inference only: no grad)."""
    q = torch.randn(2, 4, 9, 8)
    k, v = torch.randn(5, 2, 4, 8), torch.randn(5, 2, 4, 6)
    table = torch.tensor([[4, 0, 2], [1, 3, 3]], dtype=torch.int32)
    spans = torch.tensor([[1, 10], [0, 3]], dtype=torch.int32)
    return _forward_args(q, k, v, max_k=10, window=(-1, 0), bottom_right=True) + (None, None, None, [], table, spans, 2)


def _block_mask(L=9, S=11, block_q=4, block_k=5):
    """A compact block mask (mfa_torch/block_masks.py) for L x S in (block_q, block_k) blocks: empty, full and
    partial blocks."""
    states = torch.tensor([[-2, 0, -1], [1, -2, -1], [-1, 2, -2]], dtype=torch.int32).view(1, 1, 3, 3)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (3, block_q, 1), dtype=torch.int32,
                         generator=torch.Generator().manual_seed(0))
    return states, bits, [block_q, block_k]


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_opcheck_attention_forward(case):
    torch.library.opcheck(torch.ops.mfa.attention_forward.default, ATTENTION_CASES[case]())


@pytest.mark.parametrize("case", ["plain", "float_mask_with_grad", "varlen", "dropout", "block_mask"])
def test_opcheck_attention_backward(case):
    args = ATTENTION_CASES[case]()
    q, k, v, mask = args[:4]
    out, stats = torch.ops.mfa.attention_forward(*args)
    mask_grad = mask is not None and mask.requires_grad
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    blocks = tuple(detached[17:])  # the block mask's three arguments, after the sinks
    backward_args = (torch.randn_like(out), *detached[:3], out.detach(), stats, *detached[3:16], mask_grad, *blocks)
    torch.library.opcheck(torch.ops.mfa.attention_backward.default, backward_args)


def test_fake_backward_gradients_are_contiguous_like_the_kernels():
    """The kernels return dense gradients whatever the inputs' strides; the fake kernel must promise the same
    strides, or torch.compile plans the graph around a layout the op does not produce."""
    B, Hq, Hk, L, S, E, Ev = 2, 4, 2, 9, 11, 8, 6
    strided = lambda b, x, h, y: torch.randn(b, x, h, y).transpose(1, 2)  # noqa: E731  (B, H, X, Y), not contiguous
    q, k, v = strided(B, L, Hq, E), strided(B, S, Hk, E), strided(B, S, Hk, Ev)
    args = _forward_args(q, k, v, mask=torch.randn(B, Hq, S, L).transpose(2, 3))
    out, stats = torch.ops.mfa.attention_forward(*args)
    backward_args = (strided(B, L, Hq, Ev), q, k, v, out, stats, *args[3:], True)
    real = torch.ops.mfa.attention_backward(*backward_args)
    with FakeTensorMode() as mode:
        fake = torch.ops.mfa.attention_backward(
            *(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in backward_args))
    for name, r, f in zip(("dq", "dk", "dv", "dmask"), real, fake):
        assert r.is_contiguous() and f.is_contiguous(), name
        assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype), name


@pytest.mark.parametrize("a_shape,b_shape,bias", [
    ((3, 5, 7), (3, 7, 4), False),
    ((1, 5, 7), (3, 7, 4), True),   # a broadcast over the batch
    ((3, 5, 7), (1, 7, 4), True),   # b broadcast over the batch
    ((1, 1, 7), (1, 7, 1), False),
    ((2, 0, 7), (2, 7, 3), False),
])
def test_opcheck_gemm(a_shape, b_shape, bias):
    a = torch.randn(*a_shape, requires_grad=True)
    b = torch.randn(b_shape[0], b_shape[2], b_shape[1]).transpose(1, 2).requires_grad_()  # transposed strides
    c = torch.randn(b_shape[2], requires_grad=True) if bias else None
    torch.library.opcheck(torch.ops.mfa.gemm.default, (a, b, c))


def test_softmax_stats_are_not_differentiable():
    q, k, v = _qkv()
    out, stats = torch.ops.mfa.attention_forward(*_forward_args(q, k, v))
    assert out.requires_grad and not stats.requires_grad


def test_dropout_without_seed_is_rejected():
    q, k, v = _qkv(grad=False)
    args = list(_forward_args(q, k, v, dropout_p=0.5))
    args[-1] = None
    with pytest.raises(ValueError, match="dropout_seed"):
        torch.ops.mfa.attention_forward(*args)


def test_double_backward_raises_clearly():
    q, k, v = _qkv(dtype=torch.float64)
    out, _ = torch.ops.mfa.attention_forward(*_forward_args(q, k, v))
    (dq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="attention_backward"):
        torch.autograd.grad(dq.sum(), q)


@pytest.mark.parametrize("bad,message", [
    (dict(window=(-2, 0)), "window_left"),
    (dict(dropout_p=1.0), "dropout_p"),
    (dict(softcap=-1.0), "softcap"),
    (dict(scale=float("nan")), "scale"),
    (dict(mask=torch.ones(1, 1, 3, 11, dtype=torch.bool)), "mask dim 2"),
    (dict(alibi=torch.rand(1, 3)), "alibi_slopes"),
])
def test_raw_op_rejects_bad_arguments(bad, message):
    q, k, v = _qkv(grad=False)
    with pytest.raises(ValueError, match=message):
        torch.ops.mfa.attention_forward(*_forward_args(q, k, v, **bad))
