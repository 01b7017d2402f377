"""Greedy generation with a transformers model whose attention runs through mfa_torch (attn_implementation="mfa").

    python examples/transformers_generate.py                   # a tiny Llama built from a config, no download
    python examples/transformers_generate.py --model Qwen/Qwen3-0.6B --prompt "The capital of France is"

With --model the weights and tokenizer come from the Hugging Face hub; on a Mac the model runs on the
"mps" device. Either way the same generation is repeated with transformers' own "sdpa" attention and the
tokens are compared.
"""
import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

import mfa_torch
from mfa_torch.integrations.transformers import register


def tiny_llama():
    """Two layers, grouped-query attention (4 query heads, 2 key/value heads), random weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="mfa"), None


def hub_model(name, device):
    dtype = torch.float16 if device == "mps" else torch.float32
    return AutoModelForCausalLM.from_pretrained(name, attn_implementation="mfa", dtype=dtype), \
        AutoTokenizer.from_pretrained(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a hub model name (default: a tiny Llama built from a config)")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    register()  # attn_implementation="mfa" from here on
    device = "mps" if torch.backends.mps.is_available() else "cpu"
    model, tokenizer = hub_model(args.model, device) if args.model else tiny_llama()
    model = model.to(device).eval()
    if tokenizer is None:
        inputs = dict(input_ids=torch.randint(0, model.config.vocab_size, (1, 12), device=device))
    else:
        inputs = tokenizer(args.prompt, return_tensors="pt").to(device)

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = torch.empty(1, config.num_attention_heads, inputs["input_ids"].shape[1], head_dim, device=device)
    kv = torch.empty(1, config.num_key_value_heads, q.shape[2], head_dim, device=device)
    print("prefill attention:", mfa_torch.explain(q, kv, kv, is_causal=True, enable_gqa=True))

    tokens = {}
    for implementation in ("mfa", "sdpa"):
        model.set_attn_implementation(implementation)
        start = time.perf_counter()
        tokens[implementation] = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        print(f"{implementation:>4}: {time.perf_counter() - start:.2f} s")
    new = tokens["mfa"][0, inputs["input_ids"].shape[1]:]
    print("generated:", tokenizer.decode(new) if tokenizer else new.tolist())
    print("same tokens as transformers' sdpa:", torch.equal(tokens["mfa"], tokens["sdpa"]))


if __name__ == "__main__":
    main()
