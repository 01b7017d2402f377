"""The reference route never materialises an L x S tensor: a windowed forward + backward at L = 16384 runs
in a subprocess whose peak memory is bounded far below the 1 GiB one fp32 L x S matrix would take."""
import subprocess
import sys

import pytest

_SCRIPT = r"""
import resource, torch, mfa_torch
torch.manual_seed(0)
L, D = 16384, 32
q, k, v = (torch.randn(1, 2, L, D, requires_grad=True) for _ in range(3))
out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True, window_size=(256, 0))  # warm-up, small
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True, window_size=(256, 0))
out.sum().backward()
assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)  # MiB (ru_maxrss is in KiB)
"""


@pytest.mark.slow
def test_windowed_attention_at_16k_tokens_never_allocates_l_by_s():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    growth_mib = int(result.stdout.split()[-1])
    one_score_matrix_mib = 16384 * 16384 * 4 // 2**20  # per head, fp32
    assert growth_mib < 160, f"peak memory grew by {growth_mib} MiB (an L x S score matrix is {one_score_matrix_mib} MiB)"
