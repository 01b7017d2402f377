"""Continuous batching (model.generate_batch, transformers' paged attention cache) with attn_implementation
"paged|mfa", on tiny models built from configs, against transformers' own "paged|sdpa" (or "paged|eager") on the
same weights (fp32)."""
import pytest
import torch

import mfa_torch
import transformers.generation.continuous_batching.cache as paged_cache
from transformers import (AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig, GptOssConfig, LlamaConfig,
                          Qwen3Config)

from mfa_torch import attention
from mfa_torch.integrations.transformers import paged_attention_forward, register

register()

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.2)
WINDOW = 4  # below the prompt lengths, so the sliding-window layer's cache drops keys
# name -> (config, transformers' paged implementation to compare with)
MODELS = {
    "llama-gqa": (lambda: LlamaConfig(**SMALL), "paged|sdpa"),
    # layer 0 full attention, layer 1 sliding: two caches, and per-kind cu_seq_lens_k / max_seqlen_k dicts
    "qwen3": (lambda: Qwen3Config(**SMALL, head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                                  max_window_layers=1), "paged|sdpa"),
    # attention sinks (s_aux) on a sliding and a full layer; transformers has no sdpa path for GPT-OSS
    "gpt-oss": (lambda: GptOssConfig(**SMALL, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
                                     sliding_window=WINDOW), "paged|eager"),
}
PROMPT_LENGTHS = (5, 11, 17)
NEW_TOKENS = 6
# Pages of 4 tokens: every prompt spans several pages. At most 16 tokens a step: the 17-token prompt is prefilled in
# two chunks (queries after cached keys) and steps mix prefills with decodes.
CB_CONFIG = dict(page_size=4, num_blocks=64, max_batch_tokens=16)


@pytest.fixture(autouse=True)
def _memory(monkeypatch):
    """transformers sizes the paged cache from the free memory, which it reads on CPU only through psutil (not
    installed here: it would report 0 bytes and refuse). A fixed 1 GiB budget; the tests fix the cache size anyway."""
    monkeypatch.setattr(paged_cache, "get_device_and_memory_breakdown", lambda: (torch.device("cpu"), 1 << 30, 0, 0))


@pytest.fixture
def calls(monkeypatch):
    """What every call of mfa_torch.flash_attn_varlen_func received (generate_batch calls it from its own thread)."""
    seen = []
    varlen = attention.flash_attn_varlen_func

    def spy(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
        seen.append(dict(q=q.shape, k=k.shape, cu_q=cu_seqlens_q.tolist(), cu_k=cu_seqlens_k.tolist(),
                         max_q=max_seqlen_q, max_k=max_seqlen_k, **options,
                         paged=options.get("block_table") is not None))
        return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options)

    monkeypatch.setattr(attention, "flash_attn_varlen_func", spy)
    return seen


def build(name, implementation="mfa"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(MODELS[name][0](), attn_implementation=implementation).eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, SMALL["vocab_size"], (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def generate_batch(model, implementation):
    model.set_attn_implementation(implementation)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=0)
    outputs = model.generate_batch(prompts(), generation_config=config,
                                   continuous_batching_config=ContinuousBatchingConfig(**CB_CONFIG))
    # generate_batch logs a failing step rather than raising: a request that failed carries its error
    assert [o.error for o in outputs.values()] == [None] * len(PROMPT_LENGTHS)
    return [o.generated_tokens for o in outputs.values()]


@pytest.mark.parametrize("loaded_as", ["mfa", "paged|mfa"])
@pytest.mark.parametrize("name", MODELS)
def test_generate_batch_gives_the_tokens_of_transformers_paged_attention(name, loaded_as, calls):
    model = build(name, loaded_as)
    ours = generate_batch(model, loaded_as)
    assert model.config._attn_implementation == loaded_as  # "mfa" ran as "paged|mfa" and is restored afterwards
    assert [len(t) for t in ours] == [NEW_TOKENS] * len(PROMPT_LENGTHS)
    assert ours == generate_batch(model, MODELS[name][1])

    layers = model.config.num_hidden_layers
    assert calls and len(calls) % layers == 0  # every layer of every step, nothing else
    assert any(len(c["cu_q"]) > 2 for c in calls)  # several sequences in one call
    assert any(c["cu_k"][-1] > c["cu_q"][-1] for c in calls)  # keys read back from the cache
    assert any(c["max_q"] > 1 and c["cu_k"][-1] > c["cu_q"][-1] for c in calls)  # a prompt's second chunk
    for c in calls:
        assert c["causal"] and c["k"][-2] == SMALL["num_key_value_heads"]  # GQA heads never expanded
        assert c["q"][0] == c["cu_q"][-1]
        # keys straight from the cache's pages, (pages, page size, Hk, D), or the packed keys update() returned
        assert c["k"][1] == CB_CONFIG["page_size"] if c["paged"] else c["k"][0] == c["cu_k"][-1]
        assert (c["s_aux"] is not None) == (name == "gpt-oss")
    layer_types = getattr(model.config, "layer_types", None) or ["full_attention"] * layers
    assert name == "llama-gqa" or "sliding_attention" in layer_types
    for layer, kind in enumerate(layer_types):
        assert {c["window_size"] for c in calls[layer::layers]} == {(WINDOW - 1, 0) if kind == "sliding_attention"
                                                                    else (-1, -1)}
        # a full-attention layer reads cached keys from the pages (a sliding one's ring buffer is gathered); with
        # nothing cached (every sequence a first prefill chunk) it attends the new keys as they are
        for c in calls[layer::layers]:
            assert c["paged"] == (kind == "full_attention" and c["cu_k"][-1] > c["cu_q"][-1])
        if kind == "sliding_attention":  # its cache keeps only the last WINDOW - 1 keys of each sequence
            past = [k - q for c in calls[layer::layers] for q, k in zip(deltas(c["cu_q"]), deltas(c["cu_k"]))]
            assert max(past) == WINDOW - 1


def deltas(cu):
    return [b - a for a, b in zip(cu, cu[1:])]


def test_every_call_is_routed_by_mfa_torch(routes, calls):
    generate_batch(build("llama-gqa"), "paged|mfa")
    assert calls and len(routes) == len(calls)
    assert {device for device, _, _ in routes} == {"cpu"}


@pytest.mark.emulator
def test_generate_batch_under_the_emulator(routes):
    """A real client driving the Metal kernels: the shipped .metal attention under the MSL emulator."""
    model = build("llama-gqa")
    with mfa_torch.backend("emulator"):  # one global selection: it reaches generate_batch's generation thread
        ours = generate_batch(model, "paged|mfa")
    assert routes and [route for _, _, route in routes] == ["emulator"] * len(routes)
    assert ours == generate_batch(model, "paged|sdpa")


def test_a_standard_forward_is_refused():
    """Without continuous batching's cache and lengths there is nothing to attend: an error, not a wrong result."""
    model = build("llama-gqa", "paged|mfa")
    with pytest.raises(ValueError, match='attn_implementation="mfa" for a standard forward'):
        model(torch.zeros(1, 4, dtype=torch.long))


class Layer(torch.nn.Module):
    layer_idx = 0


@pytest.mark.parametrize("extra, error, match", [
    (dict(output_attentions=True), NotImplementedError, "attention weights"),
    (dict(attention_mask=torch.zeros(1, 1, 3, 3)), NotImplementedError, "cannot apply an attention_mask"),
    (dict(position_bias=torch.zeros(1, 2, 3, 3)), NotImplementedError, "position_bias"),
    (dict(is_causal=False), NotImplementedError, "bidirectional"),
    (dict(block_table=torch.zeros(1, 1, 1, dtype=torch.int32)), NotImplementedError, "max_blocks_per_request=0"),
    (dict(cache=None), ValueError, "without a paged attention cache"),
])
def test_what_cannot_be_honoured_is_refused(extra, error, match):
    q = k = v = torch.zeros(1, 2, 3, 8)
    kwargs = dict(attention_mask=None, cache=object(), read_index=[], write_index=[]) | extra
    with pytest.raises(error, match=match):
        paged_attention_forward(Layer(), q, k, v, **kwargs)
