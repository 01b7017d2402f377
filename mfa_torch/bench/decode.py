"""Decoding with continuous batching: transformers' model.generate_batch (a paged KV cache) with mfa_torch's paged
attention ("paged|mfa") against PyTorch's SDPA path ("paged|sdpa"), the same model, prompts and cache, in one run.
Decode tokens per second: every token after each request's first, from the first request's first token to the
last token (generate_batch's timestamps)."""
import importlib.util
import math

import torch

IMPLEMENTATIONS = {"mfa_torch": "paged|mfa", "torch": "paged|sdpa"}
PROMPT_LENGTHS = (5, 12, 23, 40)
NEW_TOKENS, QUICK_NEW_TOKENS = 32, 8
PAGE_SIZE, MAX_BATCH_TOKENS = 32, 512
COLUMNS = ("impl", "device", "attn_implementation", "model", "prompts", "new_tokens", "decode_tokens_per_s",
           "same_tokens", "note")


def tiny_llama():
    """Two layers, grouped-query attention (4 query heads, 2 key/value heads), random weights: no download."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="paged|mfa")


def random_prompts(vocab_size, lengths=PROMPT_LENGTHS):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]


def fix_cpu_memory_budget():
    """transformers sizes its paged cache from the free memory, which on a CPU it reads only through psutil; without it,
    it sees 0 bytes and refuses. The cache here is sized explicitly (cache_config), so a nominal budget will do."""
    if importlib.util.find_spec("psutil") is None:
        import transformers.generation.continuous_batching.cache as paged_cache
        paged_cache.get_device_and_memory_breakdown = lambda: (torch.device("cpu"), 1 << 30, 0, 0)


def cache_config(prompts, new_tokens, page_size=PAGE_SIZE, max_batch_tokens=MAX_BATCH_TOKENS):
    """A cache just large enough for every prompt and its new tokens, instead of most of the free memory."""
    from transformers import ContinuousBatchingConfig
    pages = sum(math.ceil((len(p) + new_tokens) / page_size) for p in prompts)
    return ContinuousBatchingConfig(page_size=page_size, num_blocks=pages + len(prompts),
                                    max_batch_tokens=max_batch_tokens)


def generate(model, implementation, prompts, new_tokens, config):
    """generate_batch with `implementation` (greedy); returns the tokens per prompt and the decode rate (tokens / s)."""
    from transformers import GenerationConfig
    model.set_attn_implementation(implementation)
    generation = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    outputs = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=config,
                                   record_timestamps=True)
    failed = [o.error for o in outputs.values() if o.error is not None]
    if failed or len(outputs) != len(prompts):  # generate_batch logs a failing step instead of raising
        raise RuntimeError(f"generate_batch with {implementation} failed: {failed or 'requests missing'}")
    outputs = list(outputs.values())
    start = min(o.timestamps[0] for o in outputs)
    end = max(o.timestamps[-1] for o in outputs)
    decoded = sum(len(o.generated_tokens) - 1 for o in outputs)
    return [o.generated_tokens for o in outputs], decoded / max(end - start, 1e-9)


def compare(model, prompts, new_tokens, config):
    """{impl: (tokens, decode rate)} for each implementation, each after a short warm-up run (kernels compiled)."""
    results = {}
    for impl, implementation in IMPLEMENTATIONS.items():
        generate(model, implementation, prompts, 2, config)
        results[impl] = generate(model, implementation, prompts, new_tokens, config)
    return results


def rows(dev, quick):
    """The bench's decode rows: the tiny Llama on `dev`, both implementations."""
    base = dict(device=dev.type, model="tiny Llama (2 layers, GQA 4/2, random weights)",
                prompts="+".join(map(str, PROMPT_LENGTHS)))
    if importlib.util.find_spec("transformers") is None:
        return [dict(base, impl=impl, attn_implementation=name, note="transformers is not installed")
                for impl, name in IMPLEMENTATIONS.items()]
    from ..integrations.transformers import register
    register()
    if dev.type == "cpu":
        fix_cpu_memory_budget()
    new_tokens = QUICK_NEW_TOKENS if quick else NEW_TOKENS
    model = tiny_llama().to(dev).eval()
    prompts = random_prompts(model.config.vocab_size)
    results = compare(model, prompts, new_tokens, cache_config(prompts, new_tokens))
    same = results["mfa_torch"][0] == results["torch"][0]
    return [dict(base, impl=impl, attn_implementation=IMPLEMENTATIONS[impl], new_tokens=new_tokens,
                 decode_tokens_per_s=rate, same_tokens=same) for impl, (_, rate) in results.items()]
