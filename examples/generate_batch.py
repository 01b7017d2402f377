"""Continuous batching (transformers' model.generate_batch, a paged KV cache) with mfa_torch's attention
(attn_implementation="paged|mfa").

    python examples/generate_batch.py                   # a tiny Llama built from a config, no download
    python examples/generate_batch.py --model Qwen/Qwen3-0.6B --max-new-tokens 64

With --model the weights and tokenizer come from the Hugging Face hub; on a Mac the model runs on the "mps"
device. Either way the same prompts are generated again with transformers' own "paged|sdpa" attention: the
script prints both decode rates and whether the tokens match (the measurement is the bench's decode case,
mfa_torch/bench/decode.py).
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfa_torch.bench import decode
from mfa_torch.integrations.transformers import register

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,",
           "The three primary colours are"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a hub model name (default: a tiny Llama built from a config)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=decode.PAGE_SIZE, help="tokens per page of the KV cache")
    parser.add_argument("--max-batch-tokens", type=int, default=decode.MAX_BATCH_TOKENS,
                        help="tokens per forward (longer prompts are prefilled in chunks)")
    args = parser.parse_args()

    register()  # attn_implementation="mfa" and "paged|mfa" from here on
    device = "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cpu":
        decode.fix_cpu_memory_budget()
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="paged|mfa",
                                                     dtype=torch.float16 if device == "mps" else torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    else:
        model, tokenizer = decode.tiny_llama(), None
        prompts = decode.random_prompts(model.config.vocab_size)
    model = model.to(device).eval()

    config = decode.cache_config(prompts, args.max_new_tokens, args.page_size, args.max_batch_tokens)
    results = decode.compare(model, prompts, args.max_new_tokens, config)
    for impl, (_, rate) in results.items():
        print(f"{decode.IMPLEMENTATIONS[impl]:>10}: decode {rate:.1f} tokens/s ({len(prompts)} prompts, "
              f"{args.max_new_tokens} new tokens each, {device})")
    tokens = results["mfa_torch"][0]
    for prompt, new in zip(prompts, tokens):
        shown = repr(tokenizer.decode(prompt) + tokenizer.decode(new)) if tokenizer else f"{len(prompt)} tokens -> {new}"
        print("generated:", shown)
    print("same tokens as transformers' paged|sdpa:", tokens == results["torch"][0])


if __name__ == "__main__":
    main()
