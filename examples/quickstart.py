"""mfa_torch in one minute: drop-in attention and GEMM, extras torch lacks, gradients, and routes.

Runs anywhere: on a Mac with an Apple GPU it uses the "mps" device, elsewhere the CPU.
"""
import torch
import torch.nn.functional as F

import mfa_torch

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

# 1. A drop-in for F.scaled_dot_product_attention: same arguments, same result.
q = torch.randn(2, 8, 128, 64, device=device, requires_grad=True)
k = torch.randn(2, 2, 128, 64, device=device, requires_grad=True)  # grouped-query attention: 2 KV heads
v = torch.randn(2, 2, 128, 64, device=device, requires_grad=True)
out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
print(f"sdpa     max |mfa - torch| = {(out - expected).abs().max().item():.2e}")
print(" ", mfa_torch.explain(q, k, v, is_causal=True, enable_gqa=True))

# 2. What torch's SDPA does not offer: a sliding window, ALiBi, softcapping and the log-sum-exp.
out, lse = mfa_torch.scaled_dot_product_attention(
    q, k, v, is_causal=True, enable_gqa=True, window_size=(32, 0), softcap=30.0,
    alibi_slopes=torch.linspace(0.5, 0.01, 8, device=device), return_lse=True)
print(f"extras   out {tuple(out.shape)}, lse {tuple(lse.shape)} {lse.dtype}")
print(" ", mfa_torch.explain(q, k, v, is_causal=True, enable_gqa=True, window_size=(32, 0)))

# 3. Training through it: gradients flow to q, k and v.
out.square().mean().backward()
print(f"backward |dq| = {q.grad.norm().item():.3f}, |dk| = {k.grad.norm().item():.3f}, |dv| = {v.grad.norm().item():.3f}")

# 4. The FlashAttention API: (batch, seqlen, heads, head_dim), causal aligned to the bottom right.
qf, kf, vf = (t.detach().transpose(1, 2) for t in (q, k, v))
out = mfa_torch.flash_attn_func(qf, kf[:, :100], vf[:, :100], causal=True)
print(f"flash    out {tuple(out.shape)}")

# 5. GEMM with torch semantics.
a, b = torch.randn(4, 96, 80, device=device), torch.randn(80, 112, device=device)
print(f"matmul   max |mfa - torch| = {(mfa_torch.matmul(a, b) - a @ b).abs().max().item():.2e}")
