"""attn_implementation="mfa" on tiny transformers models built from configs, against transformers' own
"sdpa" or "eager" attention on the same weights (fp32)."""
import pytest
import torch

import mfa_torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, Gemma2Config, GptOssConfig, LlamaConfig,
                          Qwen3Config, T5Config)

from mfa_torch import attention
from mfa_torch.integrations.transformers import attention_forward, register

register()

# initializer_range 0.2 (not 0.02): attention scores large enough that softcap and masking change the result
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.2)
WINDOW = 4  # below the test sequence lengths, so sliding-window layers drop keys

# name -> (config, transformers' implementation to compare with). Gemma2 compares with "eager": transformers'
# "sdpa" path ignores its attention softcap.
MODELS = {
    "llama-gqa": (lambda **kw: LlamaConfig(**SMALL, **kw), "sdpa"),
    "gemma2": (lambda **kw: Gemma2Config(**SMALL, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                                         attn_logit_softcapping=2.0, **kw), "eager"),
    "qwen3": (lambda **kw: Qwen3Config(**SMALL, head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                                       max_window_layers=1, **kw), "sdpa"),  # layer 0 full, layer 1 sliding
    # attention sinks (s_aux) on sliding and full layers; transformers' "eager" path is its reference for sinks
    "gpt-oss": (lambda **kw: GptOssConfig(**SMALL, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
                                          sliding_window=WINDOW, **kw), "eager"),
}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def calls(monkeypatch):
    """The keyword view of every call of mfa_torch.scaled_dot_product_attention."""
    seen = []
    sdpa = attention.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
            **extras):
        seen.append(dict(query=query.shape, key=key.shape, mask=attn_mask is not None, dropout_p=dropout_p,
                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, **extras))
        return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, **extras)

    monkeypatch.setattr(attention, "scaled_dot_product_attention", spy)
    return seen


def build(name, **overrides):
    config, reference = MODELS[name]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config(**overrides), attn_implementation="mfa").eval(), reference


def batch(padded):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :4] = 0  # left padding, as for generation
    return ids, mask


def logits(model, implementation, ids, mask):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
@pytest.mark.parametrize("name", MODELS)
def test_logits_match_transformers(name, padded, calls, routes):
    model, reference = build(name)
    ids, mask = batch(padded)
    ours = logits(model, "mfa", ids, mask)
    assert len(calls) == model.config.num_hidden_layers
    assert all(c["key"][1] == model.config.num_key_value_heads and c["enable_gqa"] for c in calls)  # never expanded
    if name == "gemma2":  # softcap: mfa_torch's own kernels, not PyTorch's SDPA
        assert all(c["softcap"] == 2.0 for c in calls)
        assert routes == [("cpu", ("softcap",), "reference")] * model.config.num_hidden_layers
    expected = logits(model, reference, ids, mask)
    # Padding rows attend no key: mfa_torch gives 0 where eager averages masked keys; compare the rest.
    real = mask.bool()
    torch.testing.assert_close(ours[real], expected[real], **TOLERANCE)


@pytest.mark.parametrize("name", ["gemma2", "qwen3"])
def test_sliding_window_is_in_effect(name):
    """The premise of the sliding-window comparisons: with the window removed the logits change."""
    model, _ = build(name)
    ids, mask = batch(padded=False)
    windowed = logits(model, "mfa", ids, mask)
    full, _ = build(name, layer_types=["full_attention"] * SMALL["num_hidden_layers"])
    assert not torch.allclose(windowed, logits(full, "mfa", ids, mask), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
@pytest.mark.parametrize("name", MODELS)
def test_generate_gives_the_same_tokens(name, padded, calls):
    model, reference = build(name)
    ids, mask = batch(padded)
    tokens = {}
    for implementation in ("mfa", reference):
        model.set_attn_implementation(implementation)
        tokens[implementation] = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                                pad_token_id=0)
    assert tokens["mfa"].shape == (2, 19)
    assert torch.equal(tokens["mfa"], tokens[reference])
    decode = [c for c in calls if c["query"][2] == 1]
    assert decode and not any(c["is_causal"] for c in decode)  # one query: no causal flag, as transformers does


@pytest.mark.parametrize("name", MODELS)
def test_loss_gradients_match(name, calls):
    model, reference = build(name)
    model.train()  # attention_dropout is 0: training mode without randomness
    ids, mask = batch(padded=True)
    # Only real tokens predicting real tokens: a padding row's output differs by design (see above).
    predicted_from_padding = torch.nn.functional.pad(mask, (1, 0))[:, :-1] == 0
    labels = ids.masked_fill((mask == 0) | predicted_from_padding, -100)
    grads = {}
    for implementation in ("mfa", reference):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[implementation] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert calls and grads["mfa"].keys() == grads[reference].keys()
    for n, g in grads["mfa"].items():
        torch.testing.assert_close(g, grads[reference][n], **TOLERANCE, msg=lambda m: f"{n}: {m}")


@pytest.mark.emulator
def test_llama_forward_and_backward_under_the_emulator(routes):
    """A real client driving the Metal kernels: the shipped .metal attention under the MSL emulator."""
    model, reference = build("llama-gqa")
    model.train()  # without dropout: gradients are deterministic
    ids, mask = batch(padded=True)
    predicted_from_padding = torch.nn.functional.pad(mask, (1, 0))[:, :-1] == 0
    labels = ids.masked_fill((mask == 0) | predicted_from_padding, -100)
    results = {}
    for implementation in ("mfa", reference):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        with mfa_torch.backend("emulator"):
            out = model(ids, attention_mask=mask, labels=labels)
            out.loss.backward()
        results[implementation] = out.logits.detach(), [p.grad.clone() for p in model.parameters()]
    assert [name for _, _, name in routes] == ["emulator"] * model.config.num_hidden_layers
    real = mask.bool()
    torch.testing.assert_close(results["mfa"][0][real], results[reference][0][real], **TOLERANCE)
    for got, want in zip(results["mfa"][1], results[reference][1]):
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_dropout_only_in_training(calls):
    model, _ = build("llama-gqa", attention_dropout=0.25)
    ids, _ = batch(padded=False)
    with torch.no_grad():
        model(ids)
        model.train()
        torch.manual_seed(3)
        first = model(ids).logits
        torch.manual_seed(4)
        second = model(ids).logits
    assert [c["dropout_p"] for c in calls] == [0.0] * 2 + [0.25] * 4
    assert not torch.allclose(first, second)


def test_from_pretrained_and_set_attn_implementation(tmp_path, calls):
    model, _ = build("llama-gqa")
    model.set_attn_implementation("sdpa")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="mfa")
    assert loaded.config._attn_implementation == "mfa"
    ids, mask = batch(padded=False)
    ours = logits(loaded, "mfa", ids, mask)
    assert len(calls) == 2
    torch.testing.assert_close(ours, logits(model, "sdpa", ids, mask), **TOLERANCE)


def test_t5_learned_position_bias_matches(calls):
    """T5 passes its learned relative-position bias as position_bias: folded into the mask, with gradients."""
    config = T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0,
                      initializer_factor=1.0, decoder_start_token_id=0, pad_token_id=0)
    models = {}
    for implementation in ("mfa", "eager"):
        # built apart: set_attn_implementation does not reach T5's copied encoder and decoder configs
        torch.manual_seed(0)
        models[implementation] = AutoModelForSeq2SeqLM.from_config(config, attn_implementation=implementation)
    ids, mask = batch(padded=True)
    labels = torch.randint(1, 128, (2, 5), generator=torch.Generator().manual_seed(2))
    results = {}
    for implementation, model in models.items():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results[implementation] = out.logits, [m.relative_attention_bias.weight.grad for m in model.modules()
                                               if hasattr(m, "relative_attention_bias")]
    assert len(calls) == 6  # encoder self-attention x 2, decoder self- and cross-attention x 2
    torch.testing.assert_close(results["mfa"][0], results["eager"][0], **TOLERANCE)
    assert len(results["mfa"][1]) == 2  # one learned bias each in the encoder and the decoder
    for got, want in zip(results["mfa"][1], results["eager"][1]):
        torch.testing.assert_close(got, want, **TOLERANCE)
    tokens = [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
              for model in models.values()]
    assert torch.equal(*tokens)


def test_attention_sinks_reach_the_kernels(calls):
    """GPT-OSS's sinks go to mfa_torch as sinks (one per query head), and they change the result."""
    model, _ = build("gpt-oss")
    ids, mask = batch(padded=False)
    with_sinks = logits(model, "mfa", ids, mask)
    assert calls and all(c["sinks"] is not None and c["sinks"].shape == (SMALL["num_attention_heads"],)
                         for c in calls)
    for layer in model.model.layers:
        layer.self_attn.sinks.data.fill_(-1e4)  # a sink this low takes no probability
    assert not torch.allclose(with_sinks, logits(model, "mfa", ids, mask), rtol=1e-3, atol=1e-3)


def test_attention_weights_are_refused():
    q = k = v = torch.zeros(1, 2, 3, 8)
    with pytest.raises(NotImplementedError, match='attn_implementation="eager"'):
        attention_forward(torch.nn.Module(), q, k, v, None, output_attentions=True)
