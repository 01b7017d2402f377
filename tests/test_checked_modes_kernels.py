"""Every attention shader's kernels under the emulator's checked modes: checks="bounds" (AddressSanitizer, each buffer
copied into an allocation of exactly its size: any access outside a tensor or past a threadgroup array fails) and
checks="races" (ThreadSanitizer with one fiber per GPU thread: two threads of a threadgroup touching the same memory,
one writing, with no barrier between them, fail). Each run is also checked against the fp64 oracle.

The calls cover every code path of attention_forward, attention_combine, attention_backward_delta,
attention_backward_dq and attention_backward_dkdv:
  A  float mask over every dimension with its gradient (dQ kernel's MFA_MASK_GRAD), GQA, window band, ALiBi, softcap,
     dropout, float16 with head dims 20 / 12 (zero-padded to 24 / 16); edge tiles in both directions (42 packed rows in
     blocks of 32, 80 keys in blocks of 128 (forward) and 32 (backward)), partially valid SIMD-groups; q, k, v are
     (B, S, H, D) tensors transposed, read in place through their strides, one element per copy; forward and backward.
  B  bool mask read through broadcast (stride-0) dimensions, bottom-right causal, a short query block (9 rows in a
     threadgroup of 16); forward (the backward reads masks through the same score helper as case A's).
  C  varlen with an empty sequence and MQA (3 query heads packed per K/V head, 18 packed rows in a threadgroup of 24),
     keys long enough to split (split-KV forward + combine), causal bottom-right, 27 query rows (the delta kernel's
     last threadgroup of 4 rows is partial); q, k, v are views of packed (total, H, D) tokens; forward and backward.
  D  contiguous float16 with head dims 64: rows copied 16 bytes per access (AttentionParams::wide_rows) and the last
     key block partial (200 keys in blocks of 128); forward and backward.
  E  a FlexAttention block mask (MFA_MASK_BLOCKS) that differs by query head, in 16 x 24 blocks over 37 queries and
     70 keys: empty, full and partial blocks, the last ones cut by the sequences' ends; GQA; forward and backward.
  F  a paged K/V cache (MFA_PAGED_KV): pages of 24 rows shuffled through a pool with spare pages, one sequence starting
     past its first page (cache_leftpad), keys long enough to split, decoding 2 queries with GQA, bottom-right causal;
     forward only (a cache has no backward).
The checked builds compile slowly (~15 s each, cached on disk afterwards): the variants are compiled up front, two
at a time, and shared by the cases of a mode.
"""
import concurrent.futures

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from mfa_torch import _C, block_masks, emulator
from mfa_torch.metal import attention as metal_attention
from mfa_torch.metal.shader_files import shader_dir
from mfa_torch.paged_kv import PagedKV
from mfa_torch.reference import dropout_keep_mask
from kernel_routes import log_sum_exp
from oracle import assert_rule, attention_fp64, varlen_attention_fp64

pytestmark = pytest.mark.emulator

FAMILY = "apple7"
DTYPE = torch.float16


def _cu(lengths):
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)


def _block_mask_mod(b, h, q, kv):  # head 0: every block full; the others: empty and partial blocks
    return (h == 0) | ((((q // 10) == (kv // 12)) | (kv < 5)) & ((q + kv + h) % 4 != 0))


def _pages(name):
    """Case F's block table and spans (None for the others): sequence 0 keys 30..1129, sequence 1 keys 0..44."""
    if name != "F":
        return None
    table = torch.randperm(100, generator=torch.Generator().manual_seed(6))[:96].view(2, 48).to(torch.int32)
    return PagedKV(table, torch.tensor([[30, 1100], [0, 45]], dtype=torch.int32))


def _blocks(name):
    """The compact block mask of case E (None for the others)."""
    if name != "E":
        return None
    block_mask = create_block_mask(_block_mask_mod, None, 4, 37, 70, device="cpu", BLOCK_SIZE=(16, 24))
    return block_masks.compact(block_mask, 1, 4, 37, 70, "cpu")


def _case(name):
    """(arguments of metal_attention.forward after the route, mask_grad, oracle) for case A to F."""
    g = torch.Generator().manual_seed(ord(name))
    rand = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    if name == "E":
        Hq, Hk, L, S, E, Ev = 4, 2, 37, 70, 20, 12
        q, k, v = rand(1, Hq, L, E).to(DTYPE), rand(1, Hk, S, E).to(DTYPE), rand(1, Hk, S, Ev).to(DTYPE)
        args = (q, k, v, None, None, None, None, L, S, 0.3, -1, -1, False, 0.0, 0.0, None)
        dense = _block_mask_mod(0, torch.arange(Hq).view(1, -1, 1, 1), torch.arange(L).view(1, 1, -1, 1),
                                torch.arange(S).view(1, 1, 1, -1))
        return args, False, lambda q, k, v, mask: attention_fp64(q, k, v, mask=dense, scale=0.3)
    if name == "F":
        Hq, Hk, L, E, Ev = 4, 2, 2, 20, 12
        q, k, v = rand(2, Hq, L, E).to(DTYPE), rand(100, Hk, 24, E).to(DTYPE), rand(100, Hk, 24, Ev).to(DTYPE)
        args = (q, k, v, None, None, None, None, L, 1100, 0.3, -1, 0, True, 0.0, 0.0, None)
        pages = _pages(name)

        def oracle(q, k, v, mask):
            outs, lses = [], []
            for b, (first, count) in enumerate(pages.kv_spans.tolist()):
                position = torch.arange(first, first + count)
                page = pages.block_table[b].long()[position // 24]
                kb, vb = (t[page, :, position % 24].transpose(0, 1) for t in (k, v))
                o, lse = attention_fp64(q[b], kb, vb, causal="bottom_right", scale=0.3)
                outs.append(o)
                lses.append(lse)
            return torch.stack(outs), torch.stack(lses)
        return args, False, oracle
    if name == "A":
        B, Hq, Hk, L, S, E, Ev, p = 2, 4, 2, 21, 80, 20, 12, 0.2
        q, k, v = (rand(B, n, H, d).to(DTYPE).transpose(1, 2) for n, H, d in ((L, Hq, E), (S, Hk, E), (S, Hk, Ev)))
        mask = (rand(B, Hq, L, S) * 2).to(DTYPE)
        alibi = torch.rand(B, Hq, generator=g) * 0.1
        seed = torch.tensor([2024, 7], dtype=torch.int64)
        args = (q, k, v, mask, alibi, None, None, L, S, 0.3, 30, 5, False, 5.0, p, seed)

        def oracle(q, k, v, mask):
            keep = dropout_keep_mask(2024, 7, B, Hq, L, S, p)
            return attention_fp64(q, k, v, mask=mask, window=(30, 5), alibi_slopes=alibi, softcap=5.0, scale=0.3,
                                  dropout_keep=keep, dropout_p=p)
        return args, True, oracle
    if name == "D":
        B, H, L, S, E = 1, 2, 40, 200, 64
        q, k, v = rand(B, H, L, E).to(DTYPE), rand(B, H, S, E).to(DTYPE), rand(B, H, S, E).to(DTYPE)
        args = (q, k, v, None, None, None, None, L, S, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
        return args, False, lambda q, k, v, mask: attention_fp64(q, k, v, scale=E ** -0.5)
    if name == "B":
        Hq, L, S, E, Ev = 3, 9, 70, 20, 12
        q, k, v = rand(1, Hq, L, E).to(DTYPE), rand(1, Hq, S, E).to(DTYPE), rand(1, Hq, S, Ev).to(DTYPE)
        mask = torch.rand(1, 1, L, S, generator=g) > 0.3
        args = (q, k, v, mask, None, None, None, L, S, 0.25, -1, 0, True, 0.0, 0.0, None)
        return args, False, lambda q, k, v, mask: attention_fp64(q, k, v, mask=mask, causal="bottom_right",
                                                                   scale=0.25)
    lengths_q, lengths_k = [3, 0, 6], [530, 7, 1100]  # 9 key blocks of 128: the keys are split
    cu_q, cu_k = _cu(lengths_q), _cu(lengths_k)
    Hq, Hk, E, Ev = 3, 1, 20, 12
    tokens = lambda n, H, d: rand(n, H, d).to(DTYPE).transpose(0, 1).unsqueeze(0)  # noqa: E731  (1, H, n, d) view
    q = tokens(int(cu_q[-1]), Hq, E)
    k, v = tokens(int(cu_k[-1]), Hk, E), tokens(int(cu_k[-1]), Hk, Ev)
    args = (q, k, v, None, None, cu_q, cu_k, max(lengths_q), max(lengths_k), 0.2, -1, 0, True, 0.0, 0.0, None)

    def oracle(q, k, v, mask):
        flat = lambda t: t[0].transpose(0, 1)  # noqa: E731  (1, H, total, D) -> (total, H, D)
        out, lse = varlen_attention_fp64(flat(q), flat(k), flat(v), cu_q, cu_k, causal=True, scale=0.2)
        return out.transpose(0, 1).unsqueeze(0), lse.unsqueeze(0)
    return args, False, oracle


CASES = {"A": ("forward", "backward"), "B": ("forward",), "C": ("forward", "backward"), "D": ("forward", "backward"),
         "E": ("forward", "backward"), "F": ("forward",)}


def _variants():
    """(shader, defines) of every launch the cases make."""
    variants = set()
    for name, passes in CASES.items():
        args, mask_grad, _ = _case(name)
        problem, _ = metal_attention._prepare("emulator", *args, FAMILY, False, _blocks(name), _pages(name))
        plans = [_C.plan_attention_forward(problem)]
        if "backward" in passes:
            plans.append(_C.plan_attention_backward(problem, mask_grad))
        variants |= {(launch.shader, tuple(launch.defines)) for plan in plans for launch in plan.launches}
    return variants


@pytest.fixture(scope="module")
def compiled():
    """Builds every checked variant of both modes up front, two at a time (the emulator's disk cache then serves the
    executor's own compile calls)."""
    directory = shader_dir()
    jobs = [(shader, defines, checks) for shader, defines in _variants() for checks in ("bounds", "races")]

    def build(job):
        shader, defines, checks = job
        emulator.compile(directory / shader, defines=dict(defines), include_dirs=[directory], checks=checks)
        return shader

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        shaders = set(pool.map(build, jobs))
    return shaders


def test_the_cases_cover_every_attention_shader(compiled):
    assert compiled == {"attention_forward.metal", "attention_combine.metal", "attention_backward_delta.metal",
                        "attention_backward_dq.metal", "attention_backward_dkdv.metal"}
    kinds = {dict(defines).get("MFA_MASK_KIND") for _, defines in _variants()}
    assert kinds >= {"0", "1", "2", "3"}
    assert any(dict(d).get("MFA_MASK_GRAD") == "1" for _, d in _variants())
    assert any(dict(d).get("MFA_SPLIT_KV") == "1" for _, d in _variants())
    assert any(dict(d).get("MFA_PAGED_KV") == "1" and dict(d).get("MFA_SPLIT_KV") == "1" for _, d in _variants())


@pytest.mark.parametrize("checks", ["bounds", "races"])
@pytest.mark.parametrize("name", list(CASES))
def test_kernels_under_checked_modes(compiled, name, checks):
    args, mask_grad, oracle = _case(name)
    q, k, v, mask = args[0], args[1], args[2], args[3]
    blocks = _blocks(name)
    out, stats = metal_attention.forward("emulator", *args, blocks=blocks, pages=_pages(name), family=FAMILY,
                                         checks=checks)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    dense_mask = None if mask is None else mask if mask.dtype == torch.bool else mask.double().requires_grad_()
    ref, ref_lse = oracle(*leaves, dense_mask)
    assert_rule("out", out, None, ref, DTYPE)
    assert_rule("lse", log_sum_exp(stats).float(), None, ref_lse, DTYPE)
    if "backward" not in CASES[name]:
        return
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DTYPE)
    dq, dk, dv, dmask = metal_attention.backward("emulator", grad, q, k, v, out, stats, *args[3:], mask_grad,
                                                 blocks=blocks, family=FAMILY, checks=checks)
    wrt = leaves + ([dense_mask] if mask_grad else [])
    ref_grads = torch.autograd.grad(ref, wrt, grad.double())
    for gname, ours, want in zip(("dq", "dk", "dv", "dmask"), (dq, dk, dv, dmask), ref_grads):
        assert_rule(gname, ours, None, want, DTYPE)
