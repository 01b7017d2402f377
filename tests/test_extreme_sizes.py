"""Extreme sizes: empty tensors, length-1 and head-dim-1 problems, head dims past the kernels' (E 576, Ev 512: the
reference route, visibly; tests/test_large_head_dims.py has the kernels' largest), and 64-bit indexing proven under the emulator.

What each 64-bit test proves: the Metal kernels' element offsets are computed in 64 bits wherever a tensor's extent
passes 2^31 (indeed 2^32) elements. The large tensors live in sparse files mapped with torch.from_file: the address
range is real (16 GiB), but only the pages the kernels touch exist, so the tests run in a few seconds and a few MiB.
A kernel that computed such an offset in 32 bits (signed or unsigned) would read a page near the start of the file,
which holds zeros, instead of the values written at the far end, and the result would differ from the fp64 oracle.
Running attention problems whose *compute* passes 2^31 score elements (regression rows 1 and 2) under the emulator
would take hours: those tests check the launch plans for such sizes (no temporary of O(L x S), every size in range)
and run the 64-bit paths of the score-element index (mask offsets, dropout counters) at small sizes.
"""
import warnings

import pytest
import torch

import mfa_torch
from mfa_torch import _C, routing
from mfa_torch.metal import attention as metal_attention
from mfa_torch.reference import dropout_keep_mask
from kernel_routes import log_sum_exp
from oracle import assert_rule, attention_fp64, matmul_fp64, varlen_attention_fp64
from sdpa_check import sdpa_check

pytestmark = pytest.mark.emulator

FAR = 2 ** 32 + 3 * 4096  # an element offset past 2^32 (and not a multiple of it)


@pytest.fixture(autouse=True)
def _remove_sparse_files(tmp_path):
    """The sparse files' apparent sizes are 8-16 GiB: remove them after each test (pytest keeps old tmp dirs)."""
    yield
    for path in tmp_path.glob("*.f*"):
        path.unlink()


def _sparse(tmp_path, name, numel, dtype):
    """A 1-D tensor of `numel` elements backed by a sparse file: zeros, no memory or disk until written."""
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(numel * torch.empty(0, dtype=dtype).element_size())
    return torch.from_file(str(path), shared=True, size=numel, dtype=dtype)


# ------------------------------------------------------------------------------------------------------------------
# empty, length 1, head dim 1, head dim 256


@pytest.mark.parametrize("shape", [(0, 2, 5, 7), (2, 0, 5, 7), (2, 2, 0, 7), (2, 2, 5, 0)],
                         ids=["B=0", "H=0", "L=0", "S=0"])
def test_empty_sizes_forward_and_backward(shape):
    """Forward: output 0 and lse -inf of the right shapes (also for S = 0: no key to attend). Backward: gradients of
    the inputs' shapes, all zero."""
    B, H, L, S = shape
    q, k, v = (torch.randn(B, H, n, d, requires_grad=True) for n, d in ((L, 32), (S, 32), (S, 8)))
    with mfa_torch.backend("emulator"):
        out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, return_lse=True)
        assert out.shape == (B, H, L, 8) and lse.shape == (B, H, L)
        assert torch.all(out == 0) and torch.all(lse == float("-inf"))
        grads = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape))
    for g, x in zip(grads, (q, k, v)):
        assert g.shape == x.shape and torch.all(g == 0)


@pytest.mark.parametrize("lengths", [(0, 0), (0, 3), (3, 0)], ids=["both", "q-empty", "k-empty"])
def test_empty_varlen_sequences_and_tensors(lengths):
    """Zero-length sequences inside a varlen batch, and zero packed tokens in all: rows without keys give 0."""
    Lq, Lk = lengths
    cu_q = torch.tensor([0, 0, Lq], dtype=torch.int32)
    cu_k = torch.tensor([0, Lk, Lk], dtype=torch.int32)
    q, k, v = torch.randn(Lq, 2, 8), torch.randn(Lk, 2, 8), torch.randn(Lk, 2, 8)
    with mfa_torch.backend("emulator"):
        out = mfa_torch.flash_attn_varlen_func(q, k, v, cu_q, cu_k, Lq, Lk)
    assert out.shape == (Lq, 2, 8) and torch.all(out == 0)


@pytest.mark.parametrize("case", [
    dict(q=(2, 2, 1, 1), k=(2, 2, 1, 1), v=(2, 2, 1, 1), dtype=torch.float32),  # L = S = E = Ev = 1
    dict(q=(1, 2, 1, 256), k=(1, 2, 19, 256), v=(1, 2, 19, 256), dtype=torch.bfloat16),  # L = 1, E = Ev = 256
    dict(q=(1, 4, 19, 256), k=(1, 2, 1, 256), v=(1, 2, 1, 256), dtype=torch.float16),  # S = 1, E = Ev = 256, GQA
], ids=["L=S=E=1", "L=1,E=256", "S=1,E=256"])
def test_length_one_and_head_dim_extremes_forward_and_backward(case):
    """Output, lse and the gradients of q, k, v on the emulator route against the fp64 oracle (2x-PyTorch rule)."""
    with mfa_torch.backend("emulator"):
        assert "emulator" in mfa_torch.explain(torch.empty(case["q"]), torch.empty(case["k"]), torch.empty(case["v"]),
                                               enable_gqa=True)
        sdpa_check({n: case[n] for n in "qkv"}, case["dtype"], return_lse=True, is_causal=case["q"][2] > 1)


@pytest.mark.parametrize("dims", [(584, 64), (8, 520), (640, 640)], ids=["E=584", "Ev=520", "E=Ev=640"])
def test_head_dims_past_the_kernels_take_the_reference_route_visibly(dims, monkeypatch):
    """The Metal kernels stop at E = 576 and Ev = 512: larger head dims run on another route with a one-time warning
    naming the reason, and the result is right (forward and backward, against the fp64 oracle)."""
    E, Ev = dims
    monkeypatch.setattr(routing, "_warned", set())  # the warning is once per process: start afresh
    shapes = {"q": (1, 2, 5, E), "k": (1, 2, 7, E), "v": (1, 2, 7, Ev)}
    with mfa_torch.backend("emulator"):
        with pytest.warns(UserWarning, match=r"head dims outside E 1\.\.576, Ev 1\.\.512"):
            sdpa_check(shapes, torch.float32, window_size=(2, 0), return_lse=True)
        route = mfa_torch.explain(torch.empty(shapes["q"]), torch.empty(shapes["k"]), torch.empty(shapes["v"]),
                                  window_size=(2, 0))
    assert route.startswith("route: reference"), route


def test_explain_names_what_the_metal_kernels_lack_under_the_emulator_backend():
    q, k, v = torch.empty(1, 2, 5, 584), torch.empty(1, 2, 7, 584), torch.empty(1, 2, 7, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mfa_torch.backend("emulator"):
            assert "head dims outside" in mfa_torch.explain(q, k, v)


def test_planner_refuses_sizes_beyond_32_bit_positions():
    """Positions and counts are 32-bit in the kernels; the planner says so, naming the size (plain data, no
    allocation: meta tensors)."""
    meta = lambda *s: torch.empty(s, device="meta")  # noqa: E731
    for (q, k), name in [(((1, 1, 2 ** 31, 8), (1, 1, 4, 8)), "q_len"), (((1, 1, 4, 8), (1, 1, 2 ** 31, 8)), "kv_len"),
                         (((1, 2 ** 16, 2 ** 15, 8), (1, 1, 4, 8)), "q_len \\* q_heads")]:
        problem = metal_attention._problem(meta(*q), meta(*k), meta(*k), None, None, None, 0, 0, 1.0, -1, -1, False,
                                           0.0, 0.0, None, "apple9")
        with pytest.raises(ValueError, match=name):
            _C.plan_attention_forward(problem)
        with pytest.raises(ValueError, match=name):
            _C.plan_attention_backward(problem, False)


# ------------------------------------------------------------------------------------------------------------------
# 64-bit indexing, proven under the emulator


def _far_mask(tmp_path, B, L, S):
    """A float mask (B, 1, L, S) whose batch stride is FAR elements (> 2^32): batch 1 lives 16 GiB into a sparse
    file. Batch 0 and batch 1 get different values; a 32-bit offset would read the zeros of the file's start."""
    storage = _sparse(tmp_path, "mask.f32", FAR * (B - 1) + L * S, torch.float32)
    mask = storage.as_strided((B, 1, L, S), (FAR, 0, S, 1))
    g = torch.Generator().manual_seed(5)
    for b in range(B):
        values = torch.randn(1, L, S, generator=g) * 3
        values[0, 1, :] = float("-inf")  # a fully masked row: output 0 only if the far values are read
        values[0, 2, 0] = float("-inf")
        mask[b].copy_(values)
    return mask


def test_mask_batch_stride_beyond_2_to_the_32_forward_and_backward(tmp_path):
    """Regression row 2 (silent wrong output once the score-element index passes ~2^31): a mask element offset
    b * stride0 + ... beyond 2^32 is read correctly by the forward and by both backward kernels (dQ, dK/dV)."""
    B, H, L, S, E = 2, 2, 5, 7, 8
    mask = _far_mask(tmp_path, B, L, S)
    dense_mask = mask.clone()  # small: the two (1, L, S) slices
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, n, E, dtype=torch.float64) for n in (L, S, S))
    args = (None, None, None, None, L, S, 0.3, -1, -1, False, 0.0, 0.0, None)
    with mfa_torch.backend("emulator"):
        inputs = [t.float() for t in (q, k, v)]
        out, stats = torch.ops.mfa.attention_forward(*inputs[:3], mask, *args[1:])
        grad = torch.randn(out.shape)
        dq, dk, dv, _ = torch.ops.mfa.attention_backward(grad, *inputs, out, stats, mask, *args[1:], False)
    lse = log_sum_exp(stats)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_fp64(*leaves, mask=dense_mask, scale=0.3)
    ref_grads = torch.autograd.grad(ref, leaves, grad.double())
    assert torch.all(out[:, :, 1] == 0) and torch.all(lse[:, :, 1] == float("-inf"))
    assert_rule("out", out, None, ref, torch.float32)
    assert_rule("lse", lse.float(), None, ref_lse, torch.float32)
    for name, ours, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
        assert_rule(name, ours, None, want, torch.float32)


def test_dropout_counters_beyond_2_to_the_32(tmp_path):
    """Regression row 2, dropout side: the keep mask is keyed by the 64-bit counter of each score element; an offset
    just below 2^32 makes the counters of this small problem cross 2^32 (and 2^31), and forward and backward must
    drop exactly the elements of the independently regenerated mask."""
    B, H, L, S, E, p, seed, offset = 2, 2, 5, 7, 8, 0.4, 123456789, 2 ** 32 - 37
    mask = _far_mask(tmp_path, B, L, S)
    torch.manual_seed(1)
    q, k, v = (torch.randn(B, H, n, E, dtype=torch.float64) for n in (L, S, S))
    keep = dropout_keep_mask(seed, offset, B, H, L, S, p)
    seed_tensor = torch.tensor([seed, offset], dtype=torch.int64)
    with mfa_torch.backend("emulator"):
        leaves = [t.float().requires_grad_() for t in (q, k, v)]
        out, _ = torch.ops.mfa.attention_forward(*leaves, mask, None, None, None, L, S, 0.3, -1, -1, False, 0.0, p,
                                                 seed_tensor)
        grad = torch.randn(out.shape)
        grads = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref, _ = attention_fp64(*ref_leaves, mask=mask.clone(), scale=0.3, dropout_keep=keep, dropout_p=p)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    assert_rule("out", out, None, ref, torch.float32)
    for name, ours, want in zip("qkv", grads, ref_grads):
        assert_rule(f"d{name}", ours, None, want, torch.float32)


def test_varlen_keys_beyond_2_to_the_32_elements(tmp_path):
    """The last sequence's keys and values sit past 2^32 elements of k and v (fp16 sparse files of 8 GiB each); the
    first sequence has no queries, so the kernels touch only the far end. Forward only: the dK/dV kernel's grid spans
    max_seqlen_k (2^29 keys) and dk/dv would be 8 GiB each, too slow and too big for a test."""
    E, tail = 8, 8
    Tk = (2 ** 32) // E + 2 * tail  # tokens: the last `tail` keys start past element 2^32
    k = _sparse(tmp_path, "k.f16", Tk * E, torch.float16).view(1, 1, Tk, E)
    v = _sparse(tmp_path, "v.f16", Tk * E, torch.float16).view(1, 1, Tk, E)
    g = torch.Generator().manual_seed(2)
    k[0, 0, Tk - tail:] = torch.randn(tail, E, generator=g).half()
    v[0, 0, Tk - tail:] = torch.randn(tail, E, generator=g).half()
    q = torch.randn(1, 1, 4, E, generator=g).half()
    assert (Tk - tail) * E > 2 ** 32
    cu_q = torch.tensor([0, 0, 4], dtype=torch.int32)
    cu_k = torch.tensor([0, Tk - tail, Tk], dtype=torch.int32)
    with mfa_torch.backend("emulator"):
        out, stats = torch.ops.mfa.attention_forward(q, k, v, None, None, cu_q, cu_k, 4, Tk - tail, 0.5, -1, 0,
                                                     True, 0.0, 0.0, None)
    lse = log_sum_exp(stats).float()
    kt, vt = k[0, 0, Tk - tail:].clone(), v[0, 0, Tk - tail:].clone()
    ref, ref_lse = varlen_attention_fp64(q[0].transpose(0, 1), kt[:, None], vt[:, None], torch.tensor([0, 4]),
                                         torch.tensor([0, tail]), causal=True, scale=0.5)
    assert_rule("out", out[0].transpose(0, 1), None, ref, torch.float16)
    assert_rule("lse", lse[0], None, ref_lse, torch.float16)


def test_gemm_operand_batch_stride_beyond_2_to_the_32(tmp_path):
    """The GEMM reads its operands through their strides: a's second batch starts 16 GiB into a sparse file."""
    M, K, N = 5, 7, 6
    storage = _sparse(tmp_path, "a.f32", FAR + M * K, torch.float32)
    a = storage.as_strided((2, M, K), (FAR, K, 1))
    g = torch.Generator().manual_seed(3)
    a[0].copy_(torch.randn(M, K, generator=g))
    a[1].copy_(torch.randn(M, K, generator=g) * 5)
    b = torch.randn(1, K, N, generator=g)
    with mfa_torch.backend("emulator"):
        c = torch.ops.mfa.gemm(a, b, None)
    assert_rule("c", c, None, matmul_fp64(a.clone(), b), torch.float32)


# ------------------------------------------------------------------------------------------------------------------
# regression rows 1 and 2 through the planner


def _plans(B, Hq, Hk, L, S, E, dtype=torch.float32):
    meta = lambda *s: torch.empty(s, dtype=dtype, device="meta")  # noqa: E731
    problem = metal_attention._problem(meta(B, Hq, L, E), meta(B, Hk, S, E), meta(B, Hk, S, E), None, None, None, 0,
                                       0, E ** -0.5, -1, -1, False, 0.0, 0.0, None, "apple9")
    return _C.plan_attention_forward(problem), _C.plan_attention_backward(problem, False)


def _assert_sizes_in_range(plan, B, Hq, L, Ev, splits_bound=128):
    """No temporary is O(L x S) (each is at most B * Hq * L * splits * Ev elements), and every grid size fits the
    kernels' 32-bit grid coordinates."""
    for t in plan.temporaries:
        assert t.numel <= B * Hq * L * splits_bound * Ev, (t.name, t.numel)
    for launch in plan.launches:
        assert all(0 < n < 2 ** 32 for n in launch.threadgroups), launch.threadgroups
        assert launch.threads_per_threadgroup[0] <= 1024


def test_row1_fp32_29640_tokens_12_heads_plans_without_a_huge_array():
    """Regression row 1 (pytorch#149261: an abort because one array inside SDPA passed 2^32 bytes, for q/k/v
    (1, 12, 29640, 128) fp32). Our forward and backward plans for that call succeed and allocate no score matrix:
    the largest temporary is the backward's D (one float per query row, 1.4 MB). Running it under the emulator
    would take hours; the kernels' 64-bit offsets are proven by the sparse-file tests above."""
    B, H, L, E = 1, 12, 29640, 128
    forward, backward = _plans(B, H, H, L, L, E)
    _assert_sizes_in_range(forward, B, H, L, E)
    _assert_sizes_in_range(backward, B, H, L, E)
    assert {t.name: t.numel for t in backward.temporaries} == {"delta": B * H * L}
    assert sum(t.numel for t in forward.temporaries) * 4 < 2 ** 32


def test_row2_two_to_the_31_score_elements_plan_linear_memory():
    """Regression row 2 (ComfyUI#14837: wrong output from 2^31 score elements on): B * H * L * S = 2^31 and 2^33
    plan with temporaries linear in L (plus the split-KV partials of a decode-shaped call), never L x S."""
    for B, Hq, Hk, L, S in [(1, 8, 8, 16384, 16384), (2, 16, 4, 32768, 32768), (1, 32, 8, 1, 2 ** 26)]:
        forward, backward = _plans(B, Hq, Hk, L, S, 64)
        _assert_sizes_in_range(forward, B, Hq, L, 64)
        _assert_sizes_in_range(backward, B, Hq, L, 64)
        assert B * Hq * L * S >= 2 ** 31
