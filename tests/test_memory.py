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


_FULL_SCRIPT = r"""
import resource, torch, mfa_torch
torch.manual_seed(0)
L, D = 16384, 32
q, k, v = (torch.randn(1, 2, L, D, requires_grad=True) for _ in range(3))
small = [t[:, :, :64] for t in (q, k, v)]
mfa_torch.scaled_dot_product_attention(*small, return_lse=True)[0].sum().backward()  # warm-up, small
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert "reference" in mfa_torch.explain(q, k, v, return_lse=True)
out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True)  # every block computed: nothing to skip
out.sum().backward()
assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.slow
def test_full_attention_at_16k_tokens_never_allocates_l_by_s():
    """The same bound without a window: the reference route computes every block (forward and backward) and still
    holds one block of scores at a time (return_lse=True keeps the call off PyTorch's SDPA)."""
    result = subprocess.run([sys.executable, "-c", _FULL_SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    growth_mib = int(result.stdout.split()[-1])
    assert growth_mib < 160, f"peak memory grew by {growth_mib} MiB (an L x S score matrix is 1024 MiB per head)"


_PLAN_CASES = [  # (B, Hq, Hk, L, S, E, Ev, mask, varlen sequences)
    (1, 8, 8, 65536, 65536, 64, 64, "none", 0),
    (2, 16, 4, 65536, 65536, 128, 128, "none", 0),
    (1, 4, 4, 65536, 65536, 256, 256, "float16", 0),  # a full float mask, with its gradient in the backward
    (1, 32, 8, 1, 65536, 128, 128, "none", 0),  # decoding: split-KV partials
    (4, 32, 8, 7, 65536, 64, 64, "bool", 0),
    (1, 8, 2, 65536, 65536, 96, 40, "none", 3),  # varlen: 3 sequences packed into 65536 tokens
]


@pytest.mark.parametrize("family", ["apple7", "apple9"])
@pytest.mark.parametrize("case", _PLAN_CASES, ids=lambda c: f"B{c[0]}-H{c[1]}/{c[2]}-L{c[3]}-S{c[4]}-E{c[5]}/{c[6]}-"
                                                          f"{c[7]}-varlen{c[8]}")
def test_no_launch_plan_has_an_l_by_s_temporary(family, case):
    """The Metal route's forward and backward plans at L = S = 65536 (and decoding against 65536 keys): every
    temporary is O(B * Hq * L * splits * Ev) (split-KV partials) or O(B * Hq * L) (the backward's D), never
    O(L x S): at these sizes an L x S float tensor per head would be 16 GiB."""
    import torch
    from mfa_torch import _C
    from mfa_torch.metal import attention as metal_attention

    B, Hq, Hk, L, S, E, Ev, mask, sequences = case
    meta = lambda *s: torch.empty(s, dtype=torch.float16, device="meta")  # noqa: E731
    mask_tensor = None if mask == "none" else torch.empty((B, Hq, L, S), device="meta",
                                                          dtype=torch.bool if mask == "bool" else torch.float16)
    cu = torch.empty(sequences + 1, dtype=torch.int32, device="meta") if sequences else None
    problem = metal_attention._problem(meta(B, Hq, L, E), meta(B, Hk, S, E), meta(B, Hk, S, Ev), mask_tensor, None, cu,
                                       L // max(sequences, 1) + 1, S // max(sequences, 1) + 1, E ** -0.5, -1, -1,
                                       False, 0.0, 0.0, None, family)
    forward = _C.plan_attention_forward(problem)
    backward = _C.plan_attention_backward(problem, mask == "float16")
    splits = max(launch.threadgroups[2] for launch in forward.launches if launch.kernel == "attention_forward") // \
        (sequences or B)
    rows = B * Hq * L
    assert {t.name: t.numel for t in backward.temporaries} == {"delta": rows}
    expected = {"partial_out": rows * splits * Ev, "partial_stats": 2 * rows * splits} if splits > 1 else {}
    assert {t.name: t.numel for t in forward.temporaries} == expected
    if L >= 1024:  # prefill: far below one score per (row, key)
        for t in list(forward.temporaries) + list(backward.temporaries):
            assert t.numel * 64 < rows * S, f"{t.name}: {t.numel} elements is not small next to B x H x L x S"
