"""The shipped Metal kernels on a CPU: mfa_torch's attention forward and fused backward run by the MSL emulator.

    python examples/emulator_demo.py

No Apple GPU needed. The emulator compiles shaders/*.metal with g++ against a C++ implementation of the Metal
Shading Language and runs every GPU thread with Metal's threadgroup, barrier and SIMD-group rules; the results are
compared with PyTorch's own attention in float64. The first run compiles each kernel variant (a few seconds each,
cached afterwards in ~/.cache/mfa_torch).
"""
import time

import torch

import mfa_torch
from mfa_torch.metal import attention as metal_attention

torch.manual_seed(0)
B, Hq, Hk, L, S, E = 1, 4, 2, 96, 160, 64
q = torch.randn(B, Hq, L, E, dtype=torch.float16, requires_grad=True)
k = torch.randn(B, Hk, S, E, dtype=torch.float16, requires_grad=True)
v = torch.randn(B, Hk, S, E, dtype=torch.float16, requires_grad=True)
options = dict(enable_gqa=True, window_size=(48, 0), softcap=20.0)

with mfa_torch.backend("emulator"):
    print(mfa_torch.explain(q, k, v, **options))
    start = time.time()
    out = mfa_torch.scaled_dot_product_attention(q, k, v, **options)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    print(f"forward + backward under the emulator: {time.time() - start:.1f} s (including compiling the kernels)")

# The same computation in float64 with PyTorch operations: scores, softcap, the sliding window, softmax.
q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
kx, vx = (t.repeat_interleave(Hq // Hk, dim=1) for t in (k64, v64))
scores = 20.0 * torch.tanh(q64 @ kx.transpose(-1, -2) / E ** 0.5 / 20.0)
i, j = torch.arange(L).view(-1, 1), torch.arange(S).view(1, -1)
scores = scores.masked_fill((j > i) | (j < i - 48), float("-inf"))
ref = torch.softmax(scores, -1) @ vx
ref_grads = torch.autograd.grad(ref.square().sum(), (q64, k64, v64))
print(f"max |out - float64|  = {(out.double() - ref).abs().max().item():.2e}  (float16 output)")
for name, g, r in zip("qkv", grads, ref_grads):
    print(f"max |d{name} - float64| = {(g.double() - r).abs().max().item():.2e}  (relative to max {r.abs().max():.1f})")

# Tile skipping: with a causal sliding window, key blocks outside the band are never loaded.
_, _, tiles = metal_attention.forward("emulator", q.detach(), k.detach(), v.detach(), None, None, None, None, 0, 0,
                                      E ** -0.5, 48, 0, False, 20.0, 0.0, None, count_tiles=True)
print(f"key/value tiles computed: {int(tiles.sum())} (each threadgroup only visits its band of keys)")
