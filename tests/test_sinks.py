"""Attention sinks (GPT-OSS): one extra logit per query head in every row's softmax, with no value vector.

Against the fp64 oracle (the sink as one more score column, dropped after the softmax) with the 2x-PyTorch-error
rule, for the output, the lse and the gradients of q, k, v and the sinks, on the reference route and on the Metal
kernels under the emulator (the forward adds the sink to each row's softmax, the split-KV combine adds it once per
row; the backward kernels need nothing of it, the stats carry it)."""
import pytest
import torch

import mfa_torch
from mfa_torch import _C
from mfa_torch.metal import variants
from oracle import DT_IDS, DTYPES, attention_fp64, check_against_oracle, flash_to_sdpa, make_inputs, \
    sdpa_to_flash, torch_attention_same_dtype

BACKENDS = ["reference", "emulator"]


def _shapes(Hq=4, Hk=2, L=37, S=45, E=32, Ev=24):
    return {"q": (2, Hq, L, E), "k": (2, Hk, S, E), "v": (2, Hk, S, Ev), "sinks": (Hq,)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("causal", [None, "upper_left"])
def test_sdpa_sinks_forward_and_gradients(backend, dtype, causal):
    inputs = make_inputs(_shapes(), dtype, seed=3)
    inputs["sinks"] = (inputs["sinks"].detach().float() * 2).requires_grad_()  # sinks are float32 for every dtype
    gqa = dict(enable_gqa=True)

    def ours(t):
        with mfa_torch.backend(backend):
            return mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=causal is not None,
                                                          sinks=t["sinks"], return_lse=True, **gqa)

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], causal=causal, sinks=t["sinks"])

    def same_dtype(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], causal=causal, sinks=t["sinks"])

    check_against_oracle(ours, oracle, same_dtype, inputs, dtype, check_lse=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flash_s_aux_with_window_and_bottom_right_causal(backend):
    dtype = torch.float16
    inputs = make_inputs(_shapes(L=20, S=33), dtype, seed=5)
    inputs["sinks"] = inputs["sinks"].detach().float().requires_grad_()
    window = (7, 0)

    def ours(t):
        with mfa_torch.backend(backend):
            out = mfa_torch.flash_attn_func(sdpa_to_flash(t["q"]), sdpa_to_flash(t["k"]), sdpa_to_flash(t["v"]),
                                            causal=True, window_size=window, s_aux=t["sinks"])
        return flash_to_sdpa(out)

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], causal="bottom_right", window=window, sinks=t["sinks"])

    def same_dtype(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], causal="bottom_right", window=window,
                                          sinks=t["sinks"])

    check_against_oracle(ours, oracle, same_dtype, inputs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_with_split_keys_adds_the_sink_once(backend):
    """One query over many keys: the Metal route splits the keys and its combine adds the sink (plan checked)."""
    dtype = torch.float16
    inputs = make_inputs(_shapes(Hq=2, Hk=1, L=1, S=2000, E=16, Ev=16), dtype, seed=9)
    inputs["sinks"] = (inputs["sinks"].detach().float() + 3).requires_grad_()

    def ours(t):
        with mfa_torch.backend(backend):
            return mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], sinks=t["sinks"], enable_gqa=True,
                                                          return_lse=True)

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], sinks=t["sinks"])

    def same_dtype(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], sinks=t["sinks"])

    check_against_oracle(ours, oracle, same_dtype, inputs, dtype, check_lse=True)
    problem = variants.attention_problem("apple9", "float16", head_dim=16, value_dim=16, q_len=1, kv_len=2000,
                                         q_heads=2, kv_heads=1, sinks=True)
    kernels = [launch.kernel for launch in _C.plan_attention_forward(problem).launches]
    assert kernels == ["attention_forward", "attention_combine"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_attend_nothing_give_all_probability_to_the_sink(backend):
    """A row whose keys are all masked: out 0, lse = the sink, zero gradients for q (the sink's own gradient is
    p_sink (0 - D) with D = 0 there)."""
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.float32, requires_grad=True) for _ in range(3))
    sinks = torch.tensor([0.5, -1.0], requires_grad=True)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 2, :] = False
    with mfa_torch.backend(backend):
        out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask, sinks=sinks, return_lse=True)
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    assert torch.equal(lse[0, :, 2], sinks.detach())
    out.sum().backward()
    assert torch.equal(q.grad[:, :, 2], torch.zeros_like(q.grad[:, :, 2]))
    ref_sinks = sinks.detach().double().requires_grad_()
    ref_out, _ = attention_fp64(q.detach(), k.detach(), v.detach(), mask=mask, sinks=ref_sinks)
    ref_out.sum().backward()
    torch.testing.assert_close(sinks.grad.double(), ref_sinks.grad, rtol=1e-5, atol=1e-6)


def test_varlen_s_aux_matches_each_sequence_alone():
    """Each packed sequence is one dense problem with the same sinks."""
    torch.manual_seed(0)
    lengths = [5, 0, 9]
    cu = torch.tensor([0, 5, 5, 14], dtype=torch.int32)
    q, k, v = (torch.randn(14, 4, 16) for _ in range(3))
    sinks = torch.randn(4)
    out = mfa_torch.flash_attn_varlen_func(q, k, v, cu, cu, 9, 9, causal=True, s_aux=sinks)
    start = 0
    for n in lengths:
        if n:
            piece = slice(start, start + n)
            ref, _ = attention_fp64(flash_to_sdpa(q[None, piece]), flash_to_sdpa(k[None, piece]),
                                    flash_to_sdpa(v[None, piece]), causal="bottom_right", sinks=sinks)
            torch.testing.assert_close(out[piece].double(), sdpa_to_flash(ref)[0], rtol=1e-5, atol=1e-6)
        start += n


@pytest.mark.parametrize("sinks, error, match", [
    (torch.zeros(3), ValueError, r"sinks must have shape \(4,\)"),
    (torch.zeros(1, 4), ValueError, r"sinks must have shape \(4,\)"),
    (torch.zeros(4, dtype=torch.int64), TypeError, "sinks must be floating"),
    ([0.0] * 4, TypeError, "sinks must be a torch.Tensor"),
])
def test_bad_sinks_are_named(sinks, error, match):
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(error, match=match):
        mfa_torch.scaled_dot_product_attention(q, q, q, sinks=sinks)


def test_sinks_route_is_explained():
    q = torch.randn(1, 4, 3, 8)
    why = mfa_torch.explain(q, q, q, sinks=torch.zeros(4))
    assert "sinks" in why
