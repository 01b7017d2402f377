"""Train a tiny language model whose attention (forward and backward) runs through mfa_torch.

    python examples/train_tiny_llm.py                  # a tiny Llama, 150 steps, well under a minute on a CPU
    python examples/train_tiny_llm.py --arch gemma2    # Gemma 2 style: attention softcap and a sliding window

The model is built from a config with attn_implementation="mfa" and learns a copying task: each sequence
is a random half followed by the same half again, so the second half is predictable only by attending
back to the first. The loss printed over the second halves falls from about log(vocab) towards 0.

Where the attention runs is mfa_torch's route decision (printed first): on a Mac the "mps" device; on other
devices plain causal attention is served by PyTorch's own SDPA kernel and backward, while Gemma 2's softcap
(which PyTorch's SDPA lacks) runs mfa_torch's own kernels and fused backward on every device.
"""
import argparse
import math

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

import mfa_torch
from mfa_torch.integrations.transformers import register

VOCAB = 64
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
CONFIGS = {
    "llama": lambda: LlamaConfig(**SIZES),
    "gemma2": lambda: Gemma2Config(**SIZES, head_dim=16, query_pre_attn_scalar=16, sliding_window=24,
                                   attn_logit_softcapping=50.0, final_logit_softcapping=None),
}


def copy_batch(batch, half, device):
    first = torch.randint(0, VOCAB, (batch, half), device=device)
    return torch.cat([first, first], dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(CONFIGS), default="llama")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--half", type=int, default=16, help="length of the random half of each sequence")
    args = parser.parse_args()

    register()
    device = "mps" if torch.backends.mps.is_available() else "cpu"
    torch.manual_seed(0)
    config = CONFIGS[args.arch]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="mfa").to(device).train()

    # The attention calls the training makes: queries with gradients, causal, key/value heads not expanded.
    head_dim = config.hidden_size // config.num_attention_heads
    q = torch.empty(args.batch, config.num_attention_heads, 2 * args.half, head_dim, device=device,
                    requires_grad=True)
    kv = torch.empty(args.batch, config.num_key_value_heads, 2 * args.half, head_dim, device=device)
    softcap = config.attn_logit_softcapping if args.arch == "gemma2" else 0.0
    print(f"{args.arch} attention:", mfa_torch.explain(q, kv, kv, is_causal=True, enable_gqa=True, softcap=softcap))

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(1, args.steps + 1):
        ids = copy_batch(args.batch, args.half, device)
        labels = ids.clone()
        labels[:, :args.half + 1] = -100  # score the copied half only (its first token has no context yet)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (a model that cannot copy stays near log({VOCAB}) = "
          f"{math.log(VOCAB):.3f})")
    if not losses[-1] < 0.75 * losses[0]:
        raise SystemExit("the loss did not fall: training is broken")


if __name__ == "__main__":
    main()
