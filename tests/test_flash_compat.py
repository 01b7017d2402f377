"""FlashAttention's API as its users call it: window_size in any integer pair form, block_table, the packed
functions (whose q, k, v reach the ops as views of the packed tensor), and S_dmask, the attention probabilities
with the dropped ones negated, which FlashAttention returns with return_attn_probs=True and dropout."""
import numpy as np
import pytest
import torch

import mfa_torch
from mfa_torch import attention as attention_module
from mfa_torch import attention_call
from oracle import allowed_mask, assert_close_fp64, attention_fp64, flash_to_sdpa, sdpa_to_flash, \
    varlen_attention_fp64

ROUTES = ["auto", "emulator"]  # the reference route (CPU) and the Metal kernels under the emulator


def _randn(*shape, seed=0, grad=False):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(grad)


def _dense(B=2, Sq=5, Sk=7, H=4, Hk=2, D=8, seed=0, grad=False):
    return (_randn(B, Sq, H, D, seed=seed, grad=grad), _randn(B, Sk, Hk, D, seed=seed + 1, grad=grad),
            _randn(B, Sk, Hk, D, seed=seed + 2, grad=grad))


def _oracle(q, k, v, **options):
    """fp64 flash_attn_func: (B, Sq, H, Dv), bottom-right aligned."""
    return sdpa_to_flash(attention_fp64(flash_to_sdpa(q), flash_to_sdpa(k), flash_to_sdpa(v), align="bottom_right",
                                        **options)[0])


# ---------------------------------------------------------------------------------------------------------------
# window_size: any pair of ints

PAIRS = {
    "tuple": lambda left, right: (left, right),
    "list": lambda left, right: [left, right],
    "int64_tensor": lambda left, right: torch.tensor([left, right]),
    "int32_tensor": lambda left, right: torch.tensor([left, right], dtype=torch.int32),
    "numpy_ints": lambda left, right: (np.int64(left), np.int32(right)),
    "numpy_array": lambda left, right: np.array([left, right]),
    "0d_tensors": lambda left, right: (torch.tensor(left), torch.tensor(right)),
}


@pytest.mark.parametrize("form", PAIRS)
def test_window_size_takes_any_pair_of_integers(form):
    q, k, v = _dense()
    out = mfa_torch.flash_attn_func(q, k, v, window_size=PAIRS[form](2, 1))
    assert_close_fp64("out", out, _oracle(q, k, v, window=(2, 1)), torch.float32)


def test_window_size_as_flash_attentions_own_tests_draw_it():
    torch.manual_seed(0)
    q, k, v = _dense()
    window = torch.randint(0, 7, (2,))  # what FlashAttention's test suite passes
    out = mfa_torch.flash_attn_func(q, k, v, causal=True, window_size=window)
    assert_close_fp64("out", out, _oracle(q, k, v, causal="bottom_right", window=tuple(window.tolist())),
                      torch.float32)


@pytest.mark.parametrize("window", [torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3]), torch.tensor([[1, 2]]),
                                    (True, 1), (1.5, 2), "ab", 3, torch.tensor([True, False])],
                         ids=["float_tensor", "three_ints", "2d_tensor", "bool", "float", "str", "int", "bool_tensor"])
def test_window_size_rejects_what_is_not_an_integer_pair(window):
    q, k, v = _dense()
    with pytest.raises(TypeError, match="window_size") as error:
        mfa_torch.flash_attn_func(q, k, v, window_size=window)
    assert isinstance(error.value, RuntimeError)


# ---------------------------------------------------------------------------------------------------------------
# block_table

def _varlen(lens_q=(3, 5), lens_k=(4, 6), H=4, Hk=2, D=8, seed=0, grad=False):
    cu = lambda lens: torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)  # noqa: E731
    q = _randn(sum(lens_q), H, D, seed=seed, grad=grad)
    k, v = (_randn(sum(lens_k), Hk, D, seed=seed + i, grad=grad) for i in (1, 2))
    return q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k)


def test_varlen_takes_block_table_none():
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen()
    positional = mfa_torch.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, None, False, (-1, -1), 0.0,
                                                  None, False, False, None)
    keyword = mfa_torch.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, block_table=None)
    assert torch.equal(positional, keyword)
    assert_close_fp64("out", keyword, varlen_attention_fp64(q, k, v, cu_q, cu_k)[0], torch.float32)


def test_a_positional_block_table_reads_the_keys_as_pages():
    """The packed keys as a cache of one-row pages, each sequence's block table listing its rows: the same attention
    (tests/test_kv_cache.py tests paged caches in depth)."""
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen(lens_k=(4, 7))
    table = torch.stack([torch.arange(7), torch.arange(4, 11)]).to(torch.int32)  # sequence 0 uses 4 of its 7 pages
    paged = mfa_torch.flash_attn_varlen_func(q, k.unsqueeze(1), v.unsqueeze(1), cu_q, cu_k, max_q, max_k, 0.0, None,
                                             True, (-1, -1), 0.0, None, False, False, table)
    assert_close_fp64("out", paged, varlen_attention_fp64(q, k, v, cu_q, cu_k, causal=True)[0], torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Packed functions

@pytest.fixture
def op_inputs(monkeypatch):
    """The q, k, v each attention call hands to the ops (records every call)."""
    seen = []
    run = attention_call.AttentionCall.run

    def recording(call, route):
        seen.append((call.q, call.k, call.v))
        return run(call, route)
    monkeypatch.setattr(attention_call.AttentionCall, "run", recording)
    return seen


def _views_of(packed, tensors):
    return all(t.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr() for t in tensors)


@pytest.mark.parametrize("route", ROUTES)
def test_qkvpacked_reads_views_and_gives_the_packed_gradient(route, op_inputs):
    qkv = _randn(2, 6, 3, 4, 8, grad=True)
    with mfa_torch.backend(route):
        out = mfa_torch.flash_attn_qkvpacked_func(qkv, causal=True, window_size=(3, 0))
        (grad,) = torch.autograd.grad(out.square().sum(), qkv)
    assert _views_of(qkv, op_inputs[0])
    ref = _oracle(*qkv.unbind(2), causal="bottom_right", window=(3, 0))
    assert_close_fp64("out", out, ref, torch.float32)
    assert_close_fp64("dqkv", grad, torch.autograd.grad(ref.square().sum(), qkv)[0], torch.float32)


@pytest.mark.parametrize("route", ROUTES)
def test_kvpacked_with_fewer_key_heads(route, op_inputs):
    q = _randn(2, 5, 4, 8, grad=True)
    kv = _randn(2, 7, 2, 2, 8, seed=1, grad=True)
    slopes = torch.rand(4)
    with mfa_torch.backend(route):
        out = mfa_torch.flash_attn_kvpacked_func(q, kv, causal=True, alibi_slopes=slopes, softcap=3.0)
        grads = torch.autograd.grad(out.sum(), (q, kv))
    assert _views_of(kv, op_inputs[0][1:]) and _views_of(q, op_inputs[0][:1])
    ref = _oracle(q, *kv.unbind(2), causal="bottom_right", alibi_slopes=slopes, softcap=3.0)
    assert_close_fp64("out", out, ref, torch.float32)
    for name, grad, want in zip(("dq", "dkv"), grads, torch.autograd.grad(ref.sum(), (q, kv))):
        assert_close_fp64(name, grad, want, torch.float32)


@pytest.mark.parametrize("route", ROUTES)
def test_varlen_qkvpacked(route, op_inputs):
    lens = (3, 6, 1)
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
    qkv = _randn(sum(lens), 3, 2, 8, grad=True)
    with mfa_torch.backend(route):
        out, lse, none = mfa_torch.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lens), causal=True,
                                                                    return_attn_probs=True)
        (grad,) = torch.autograd.grad(out.sum(), qkv)
    assert none is None and _views_of(qkv, op_inputs[0])
    ref, ref_lse = varlen_attention_fp64(*qkv.unbind(1), cu, cu, causal=True)
    assert_close_fp64("out", out, ref, torch.float32)
    assert_close_fp64("lse", lse, ref_lse, torch.float32)
    assert_close_fp64("dqkv", grad, torch.autograd.grad(ref.sum(), qkv)[0], torch.float32)


@pytest.mark.parametrize("route", ROUTES)
def test_varlen_kvpacked(route, op_inputs):
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen(grad=True)
    kv = torch.stack([k, v], 1).detach().requires_grad_()
    with mfa_torch.backend(route):
        out = mfa_torch.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, max_q, max_k, window_size=(2, 1))
        grads = torch.autograd.grad(out.sum(), (q, kv))
    assert _views_of(kv, op_inputs[0][1:])
    ref = varlen_attention_fp64(q, *kv.unbind(1), cu_q, cu_k, window=(2, 1))[0]
    assert_close_fp64("out", out, ref, torch.float32)
    for name, grad, want in zip(("dq", "dkv"), grads, torch.autograd.grad(ref.sum(), (q, kv))):
        assert_close_fp64(name, grad, want, torch.float32)


@pytest.mark.parametrize("call,packed", [
    (lambda p: mfa_torch.flash_attn_qkvpacked_func(p), torch.zeros(2, 5, 2, 4, 8)),
    (lambda p: mfa_torch.flash_attn_qkvpacked_func(p), torch.zeros(2, 5, 3, 4)),
    (lambda p: mfa_torch.flash_attn_kvpacked_func(torch.zeros(2, 5, 4, 8), p), torch.zeros(2, 5, 3, 4, 8)),
    (lambda p: mfa_torch.flash_attn_varlen_qkvpacked_func(p, torch.tensor([0, 5], dtype=torch.int32), 5),
     torch.zeros(5, 2, 4, 8)),
], ids=["two_in_qkv", "qkv_rank_4", "three_in_kv", "varlen_two_in_qkv"])
def test_packed_tensors_of_the_wrong_layout_are_refused(call, packed):
    with pytest.raises(RuntimeError, match=r"qkv|kv.*must have shape"):
        call(packed)


# ---------------------------------------------------------------------------------------------------------------
# S_dmask

def _probabilities_fp64(q, k, *, causal=False, window=None):
    """Softmax probabilities (B, H, Sq, Sk) in fp64, bottom-right aligned; 0 where not allowed."""
    qs, ks = flash_to_sdpa(q).double(), flash_to_sdpa(k).double()
    ks = ks.repeat_interleave(qs.shape[1] // ks.shape[1], 1)
    s = qs @ ks.transpose(-1, -2) / qs.shape[-1] ** 0.5
    ok = allowed_mask(s.shape[-2], s.shape[-1], causal="bottom_right" if causal else None, window=window,
                      align="bottom_right")
    return torch.softmax(s.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)


@pytest.mark.parametrize("route", ROUTES)
def test_s_dmask_is_the_probabilities_with_the_dropped_ones_negated(route):
    p = 0.3
    q, k, v = _dense(Sq=16, Sk=16)
    with mfa_torch.backend(route):
        out, lse, s_dmask = mfa_torch.flash_attn_func(q, k, v, dropout_p=p, causal=True, window_size=(9, 0),
                                                      return_attn_probs=True)
    assert s_dmask.shape == (2, 4, 16, 16) and s_dmask.dtype == q.dtype and not s_dmask.requires_grad
    probabilities = _probabilities_fp64(q, k, causal=True, window=(9, 0))
    assert_close_fp64("|S_dmask|", s_dmask.abs(), probabilities, torch.float32)
    kept = s_dmask >= 0
    dropped = (~kept)[probabilities > 0].float().mean().item()
    assert abs(dropped - p) < 0.1, dropped  # 1520 allowed elements: 7 standard deviations
    # The pattern is the one the output was made of: out = (kept probabilities / (1 - p)) @ v.
    recomposed = (torch.where(kept, s_dmask, 0).double() / (1 - p)) @ flash_to_sdpa(v).double().repeat_interleave(2, 1)
    assert_close_fp64("out from S_dmask", out, sdpa_to_flash(recomposed), torch.float32)


@pytest.mark.parametrize("route", ROUTES)
def test_varlen_s_dmask_holds_each_sequence_in_its_corner(route):
    q, k, v, cu_q, cu_k, max_q, max_k = _varlen(lens_q=(3, 5), lens_k=(6, 2))
    with mfa_torch.backend(route):
        out, _, s_dmask = mfa_torch.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.5,
                                                           return_attn_probs=True)
    assert s_dmask.shape == (2, 4, 5, 6)
    for b, (q0, q1, k0, k1) in enumerate([(0, 3, 0, 6), (3, 8, 6, 8)]):
        seq = s_dmask[b, :, :q1 - q0, :k1 - k0]
        expected = _probabilities_fp64(q[None, q0:q1], k[None, k0:k1])[0]
        assert_close_fp64(f"sequence {b}", seq.abs(), expected, torch.float32)
        outside = s_dmask[b].clone()
        outside[:, :q1 - q0, :k1 - k0] = 0
        assert torch.equal(outside, torch.zeros_like(outside))


def test_without_dropout_there_is_no_s_dmask():
    q, k, v = _dense()
    assert mfa_torch.flash_attn_func(q, k, v, return_attn_probs=True)[2] is None


def test_an_s_dmask_too_large_to_materialise_is_refused_before_any_kernel_runs(monkeypatch, op_inputs):
    monkeypatch.setattr(attention_module, "MAX_ATTN_PROBS_ELEMENTS", 2 * 4 * 5 * 7 - 1)
    q, k, v = _dense()
    with pytest.raises(RuntimeError, match="return_attn_probs=False"):
        mfa_torch.flash_attn_func(q, k, v, dropout_p=0.1, return_attn_probs=True)
    assert not op_inputs
    monkeypatch.setattr(attention_module, "MAX_ATTN_PROBS_ELEMENTS", 2 * 4 * 5 * 7)
    assert mfa_torch.flash_attn_func(q, k, v, dropout_p=0.1, return_attn_probs=True)[2].shape == (2, 4, 5, 7)
