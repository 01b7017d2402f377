"""flash_attn_with_kvcache (FlashAttention 2's KV-cache API) and flash_attn_varlen_func(block_table=...): attention
through contiguous and paged caches, with appends of new tokens (rotary embeddings fused into the append).

Against an fp64 oracle written here (each sequence's keys gathered from the cache by plain indexing, rotary applied in
fp64, then tests/oracle.py's dense attention, bottom-right aligned) with the 2x-PyTorch-error rule, on the reference
route and on the Metal kernels under the emulator (attention_forward with MFA_PAGED_KV, split-KV and the combine).
"""
import math

import pytest
import torch

import mfa_torch
from kernel_routes import recorded_plans
from oracle import assert_rule, attention_fp64, torch_attention_same_dtype

BACKENDS = ["reference", pytest.param("emulator", marks=pytest.mark.emulator),
            pytest.param("metal", marks=pytest.mark.mps)]
DEVICE = {"reference": "cpu", "emulator": "cpu", "metal": "mps"}


def _on(backend, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the backend selected and every tensor argument on its device; the results come back
    to the CPU, and caches the call wrote in place (tensors passed as k_cache / v_cache or as the first two
    positional arguments after q) are copied back into the caller's tensors."""
    device = DEVICE[backend]
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    moved_args, moved_kwargs = [move(a) for a in args], {n: move(t) for n, t in kwargs.items()}
    with mfa_torch.backend(backend):
        result = fn(*moved_args, **moved_kwargs)
    for given, moved in list(zip(args[1:3], moved_args[1:3])) + [(kwargs[n], moved_kwargs[n]) for n in
                                                                 ("k_cache", "v_cache") if n in kwargs]:
        if moved is not given:
            given.copy_(moved.cpu())
    back = lambda t: t.cpu() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tuple(back(r) for r in result) if isinstance(result, tuple) else back(result)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, g, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


class Cache:
    """A K/V cache to test with: paged (pages of page_size rows, each sequence's pages shuffled through the pool) or
    contiguous (page_size None: one row of capacity positions per sequence)."""

    def __init__(self, dtype, batch, Hk, D, Dv, capacity, page_size, seed=0, spare_pages=3):
        g = _generator(seed)
        self.page_size = page_size
        if page_size is None:
            rows, length = batch, capacity
            self.block_table = None
        else:
            pages_per_sequence = -(-capacity // page_size)
            rows, length = batch * pages_per_sequence + spare_pages, page_size
            order = torch.randperm(rows, generator=g)[:batch * pages_per_sequence]
            self.block_table = order.view(batch, pages_per_sequence).to(torch.int32)
        self.k = _randn((rows, length, Hk, D), dtype, g)
        self.v = _randn((rows, length, Hk, Dv), dtype, g)

    def positions(self, b, first, end):
        """(page or cache row, row) of sequence b's cache positions first..end-1."""
        pos = torch.arange(first, end)
        if self.block_table is None:
            return torch.full_like(pos, b), pos
        return self.block_table[b].long()[pos // self.page_size], pos % self.page_size

    def keys(self, b, first, end, k=None, v=None):
        """Sequence b's keys and values at positions first..end-1 (of these tensors, default the cache's)."""
        page, row = self.positions(b, first, end)
        k, v = (self.k, self.v) if k is None else (k, v)
        return k[page, row], v[page, row]  # (n, Hk, D)


def _expected(q, cache, lengths, *, leftpad=None, causal=False, window=(-1, -1), alibi=None, softcap=0.0,
              sinks=None, scale=None, dtype=None, k=None, v=None):
    """Per sequence dense attention over its cache keys (tests/oracle.py): fp64 (dtype None) or PyTorch in dtype.
    Returns (out (B, Lq, H, Dv), lse (B, H, Lq))."""
    B, Lq, H, _ = q.shape
    outs, lses = [], []
    for b in range(B):
        first = 0 if leftpad is None else int(leftpad[b])
        kb, vb = cache.keys(b, first, int(lengths[b]), k, v)
        slopes = None if alibi is None else alibi if alibi.dim() == 1 else alibi[b]
        args = dict(causal="bottom_right" if causal else None, window=None if window == (-1, -1) else window,
                    align="bottom_right", alibi_slopes=slopes, softcap=softcap, scale=scale, sinks=sinks)
        fn = attention_fp64 if dtype is None else torch_attention_same_dtype
        cast = (lambda t: t.double()) if dtype is None else (lambda t: t.to(dtype))  # noqa: E731
        o, lse = fn(cast(q[b]).transpose(0, 1), cast(kb).transpose(0, 1), cast(vb).transpose(0, 1),
                    **{**args, "sinks": None if sinks is None else cast(sinks)})
        outs.append(o.transpose(0, 1))
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def _check(q, cache, lengths, out, lse, dtype, **options):
    ref, ref_lse = _expected(q, cache, lengths, **options)
    same, same_lse = _expected(q, cache, lengths, dtype=dtype, **options)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_rule("out", out, same, ref, dtype)
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
        assert_rule("lse", lse, same_lse, ref_lse, dtype)


# ---------------------------------------------------------------------------------------------------------
# attention through the cache (no new tokens)

# (page size, capacity): pages of 8, of 24 (not a power of two, pages shorter than a key block), of 256 (longer
# than the keys), and a contiguous cache.
PAGE_CASES = [(8, 80), (24, 100), (256, 300), (None, 90)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size, capacity", PAGE_CASES, ids=["page8", "page24", "page256", "contiguous"])
def test_decode_through_pages(backend, page_size, capacity):
    dtype = torch.float16
    cache = Cache(dtype, 3, 2, 64, 64, capacity, page_size, seed=1)
    g = _generator(2)
    q = _randn((3, 1, 8, 64), dtype, g)  # 8 query heads on 2 K/V heads
    lengths = torch.tensor([capacity, 1, capacity // 2 + 3], dtype=torch.int32)
    out, lse = _on(backend, mfa_torch.flash_attn_with_kvcache, q, cache.k, cache.v, cache_seqlens=lengths,
                   block_table=cache.block_table, return_softmax_lse=True)
    _check(q, cache, lengths, out, lse, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_prefill_causal_with_window_and_softcap(backend, dtype):
    """Queries in the hundreds against a longer cache: bottom-right causal with a window, softcap, ALiBi per batch."""
    cache = Cache(dtype, 2, 1, 40, 24, 400, 24, seed=3)
    g = _generator(4)
    q = _randn((2, 130, 2, 40), dtype, g)
    lengths = torch.tensor([300, 135], dtype=torch.int32)
    alibi = torch.rand(2, 2, generator=g) * 0.1
    options = dict(causal=True, window=(90, 0), softcap=5.0, alibi=alibi)
    out = _on(backend, mfa_torch.flash_attn_with_kvcache, q, cache.k, cache.v, cache_seqlens=lengths,
              block_table=cache.block_table, causal=True, window_size=(90, -1), softcap=5.0, alibi_slopes=alibi)
    _check(q, cache, lengths, out, None, dtype, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leftpad_batch_index_and_sinks(backend):
    """A contiguous cache whose rows are picked by cache_batch_idx, keys starting at cache_leftpad; attention sinks."""
    dtype = torch.float16
    cache = Cache(dtype, 4, 2, 32, 32, 70, None, seed=5)
    g = _generator(6)
    q = _randn((3, 4, 2, 32), dtype, g)
    index = torch.tensor([3, 0, 2], dtype=torch.int32)
    lengths = torch.tensor([50, 70, 9], dtype=torch.int32)
    leftpad = torch.tensor([10, 0, 9], dtype=torch.int32)  # the last sequence attends nothing
    sinks = torch.randn(2, generator=g)
    picked = Cache.__new__(Cache)  # the oracle's view: the picked rows as their own cache
    picked.page_size, picked.block_table = None, None
    picked.k, picked.v = cache.k[index.long()], cache.v[index.long()]
    out, lse = _on(backend, mfa_torch.flash_attn_with_kvcache, q, cache.k, cache.v, cache_seqlens=lengths,
                   cache_batch_idx=index, cache_leftpad=leftpad, causal=True, s_aux=sinks, return_softmax_lse=True)
    _check(q, picked, lengths, out, lse, dtype, leftpad=leftpad, causal=True, sinks=sinks)
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # no keys: 0, its lse the sink alone
    assert torch.allclose(lse[2], sinks.view(2, 1).expand(2, 4))


@pytest.mark.emulator
@pytest.mark.parametrize("num_splits", [0, 1, 3])
def test_splits_chosen_or_given_give_the_same_attention(monkeypatch, num_splits):
    """Decoding one sequence against many keys: the planner splits the keys (num_splits=0) or takes the caller's count,
    the combine merges the partials, and the result is the same attention."""
    dtype = torch.float16
    cache = Cache(dtype, 1, 1, 64, 64, 1024, 64, seed=7)
    q = _randn((1, 1, 4, 64), dtype, _generator(8))
    lengths = torch.tensor([1000], dtype=torch.int32)
    plans = recorded_plans(monkeypatch)
    with mfa_torch.backend("emulator"):
        out = mfa_torch.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=lengths,
                                                block_table=cache.block_table, num_splits=num_splits)
    _check(q, cache, lengths, out, None, dtype)
    forward = next(launch for launch in plans[0].launches if launch.kernel == "attention_forward")
    assert dict(forward.defines)["MFA_PAGED_KV"] == "1"
    splits = forward.threadgroups[2]
    assert splits == {0: splits, 1: 1, 3: 3}[num_splits] and (num_splits or splits > 1)
    assert (len(plans[0].launches) == 2) == (splits > 1)  # the combine runs exactly when the keys are split


# ---------------------------------------------------------------------------------------------------------
# appending new tokens, rotary embeddings fused into the append

def _rope(x, cos, sin, positions, interleaved):
    """x (B, L, H, D) rotated at positions (B, L) in x's dtype, step by step with torch operations: the first
    2 * cos.shape[1] dims in pairs (2i, 2i + 1) (interleaved, GPT-J) or (i, i + rotary_dim / 2) (GPT-NeoX)."""
    half = cos.shape[1]
    c, s = cos.to(x.dtype)[positions].unsqueeze(2), sin.to(x.dtype)[positions].unsqueeze(2)
    first, second = (slice(0, 2 * half, 2), slice(1, 2 * half, 2)) if interleaved else \
        (slice(0, half), slice(half, 2 * half))
    x1, x2 = x[..., first], x[..., second]
    out = x.clone()
    out[..., first], out[..., second] = x1 * c - x2 * s, x1 * s + x2 * c
    return out


# (page size, dtype, rotary_dim, interleaved): appends that cross pages of 8 and of 24, and a contiguous cache; both
# rotary styles, rotating all of the head dim or part of it.
APPEND_CASES = [(8, torch.float16, 64, True), (24, torch.bfloat16, 32, False), (None, torch.float32, 32, True),
                (8, torch.float16, 16, False)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size, dtype, rotary_dim, interleaved", APPEND_CASES,
                         ids=["page8-fp16-gptj", "page24-bf16-neox-partial", "contiguous-fp32-gptj-partial",
                              "page8-fp16-neox-partial"])
def test_append_with_rotary_then_attend(backend, page_size, dtype, rotary_dim, interleaved):
    B, Hk, H, D, new = 2, 2, 4, 64, 6
    cache = Cache(dtype, B, Hk, D, D, 48, page_size, seed=12)
    g = _generator(13)
    q, k, v = _randn((B, new, H, D), dtype, g), _randn((B, new, Hk, D), dtype, g), _randn((B, new, Hk, D), dtype, g)
    angles = torch.rand(64, rotary_dim // 2, generator=g, dtype=torch.float64) * 2 * math.pi
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    seqlens = torch.tensor([5, 21], dtype=torch.int32)  # 5..10 crosses a page of 8; 21..26 one of 8 and one of 24
    positions = seqlens.long().view(-1, 1) + torch.arange(new)
    before_k, before_v = cache.k.clone(), cache.v.clone()
    out = _on(backend, mfa_torch.flash_attn_with_kvcache, q, cache.k, cache.v, k, v, cos, sin, cache_seqlens=seqlens,
              block_table=cache.block_table, causal=True, rotary_interleaved=interleaved)

    # The cache: the new rows written where they go, rotated; every other row untouched, bit for bit.
    written = torch.zeros(cache.k.shape[:2], dtype=torch.bool)
    for b in range(B):
        page, row = cache.positions(b, int(seqlens[b]), int(seqlens[b]) + new)
        written[page, row] = True
        assert torch.equal(cache.v[page, row], v[b]), "v is written as given"
        assert torch.equal(cache.k[page, row][..., rotary_dim:], k[b][..., rotary_dim:]), "dims past rotary_dim"
        assert_rule("appended k", cache.k[page, row], _rope(k, cos, sin, positions, interleaved)[b],
                    _rope(k.double(), cos.double(), sin.double(), positions, interleaved)[b], dtype)
    assert torch.equal(cache.k[~written], before_k[~written]) and torch.equal(cache.v[~written], before_v[~written])

    # The attention: the oracle's own cache (old rows plus the new ones rotated in fp64) and rotated queries.
    lengths = seqlens + new
    expected_k, expected_v = before_k.double(), before_v.double()
    same_k, same_v = before_k.clone(), before_v.clone()
    k64, k_same = _rope(k.double(), cos.double(), sin.double(), positions, interleaved), \
        _rope(k, cos, sin, positions, interleaved)
    for b in range(B):
        page, row = cache.positions(b, int(seqlens[b]), int(lengths[b]))
        expected_k[page, row], expected_v[page, row] = k64[b], v[b].double()
        same_k[page, row], same_v[page, row] = k_same[b], v[b]
    q64 = _rope(q.double(), cos.double(), sin.double(), positions, interleaved)
    ref, _ = _expected(q64, cache, lengths, causal=True, k=expected_k, v=expected_v)
    same, _ = _expected(_rope(q, cos, sin, positions, interleaved), cache, lengths, causal=True, dtype=dtype,
                        k=same_k, v=same_v)
    assert_rule("out", out, same, ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_causal_the_queries_rotate_at_cache_seqlens(backend):
    """FlashAttention's rule: not causal and not local, every query rotates at cache_seqlens (one decode position)."""
    dtype = torch.float32
    cache = Cache(dtype, 1, 1, 16, 16, 16, 8, seed=14)
    g = _generator(15)
    q, k, v = _randn((1, 3, 2, 16), dtype, g), _randn((1, 1, 1, 16), dtype, g), _randn((1, 1, 1, 16), dtype, g)
    angles = torch.rand(16, 8, generator=g, dtype=torch.float64)
    cos, sin = angles.cos().float(), angles.sin().float()
    expected_k, expected_v = cache.k.double(), cache.v.double()  # before the call, with the new key at position 9
    page, row = cache.positions(0, 9, 10)
    expected_k[page, row] = _rope(k.double(), cos.double(), sin.double(), torch.full((1, 1), 9), True)[0]
    expected_v[page, row] = v[0].double()
    out = _on(backend, mfa_torch.flash_attn_with_kvcache, q, cache.k, cache.v, k, v, cos, sin, cache_seqlens=9,
              block_table=cache.block_table)
    at_nine = torch.full((1, 3), 9)
    ref, _ = _expected(_rope(q.double(), cos.double(), sin.double(), at_nine, True), cache, torch.tensor([10]),
                       k=expected_k, v=expected_v)
    assert_rule("out", out, None, ref, dtype)


# ---------------------------------------------------------------------------------------------------------
# flash_attn_varlen_func over pages

@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_reads_paged_keys(backend):
    dtype = torch.float16
    lengths_q, lengths_k = [5, 0, 17, 1], [8, 3, 40, 33]
    cache = Cache(dtype, 4, 2, 32, 32, 48, 16, seed=9)
    cu_q = torch.tensor([0] + lengths_q).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lengths_k).cumsum(0).to(torch.int32)
    q = _randn((sum(lengths_q), 4, 32), dtype, _generator(10))
    out, lse, _ = _on(backend, mfa_torch.flash_attn_varlen_func, q, cache.k, cache.v, cu_q, cu_k, max(lengths_q),
                      max(lengths_k), causal=True, block_table=cache.block_table, return_attn_probs=True)
    for b in range(4):
        rows = slice(int(cu_q[b]), int(cu_q[b + 1]))
        qb = q[rows].unsqueeze(0)
        length = torch.tensor([lengths_k[b]])
        one = Cache.__new__(Cache)
        one.page_size, one.block_table, one.k, one.v = 16, cache.block_table[b:b + 1], cache.k, cache.v
        _check(qb, one, length, out[rows].unsqueeze(0), lse[:, rows].unsqueeze(0), dtype, causal=True)


# ---------------------------------------------------------------------------------------------------------
# what cannot be done

def test_no_backward_through_a_cache():
    cache = Cache(torch.float32, 1, 1, 8, 8, 16, 8)
    q = torch.randn(1, 2, 1, 8, requires_grad=True)
    out = mfa_torch.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=10, block_table=cache.block_table)
    with pytest.raises(RuntimeError, match="paged K/V cache .* has no backward"):
        out.sum().backward()


def _bad_calls():
    """(description, keyword arguments replacing the good call's, error pattern)."""
    k_new = torch.randn(2, 3, 2, 16)
    return [
        ("block_table entry out of range", dict(block_table=torch.tensor([[0, 1], [99, 3]], dtype=torch.int32)),
         r"block_table\[1, 0\] = 99 is not a page"),
        ("cache_seqlens past the cache", dict(cache_seqlens=torch.tensor([10, 31], dtype=torch.int32)),
         r"cache_seqlens\[1\] = 31 plus 3 new tokens is past the cache's 32 positions"),
        ("negative cache_seqlens", dict(cache_seqlens=torch.tensor([-1, 3], dtype=torch.int32)),
         r"cache_seqlens\[0\] = -1"),
        ("int64 cache_seqlens", dict(cache_seqlens=torch.tensor([1, 3])), "cache_seqlens must be int32"),
        ("k without v", dict(v=None), "k and v .* must be given together"),
        ("k of other heads", dict(k=torch.randn(2, 3, 1, 16), v=torch.randn(2, 3, 1, 16)),
         r"k must have shape \(2, seqlen_new, 2, 16\)"),
        ("block_table of other batch", dict(block_table=torch.zeros(3, 2, dtype=torch.int32)),
         r"block_table must have shape \(2, 'max_pages'\)"),
        ("cache_batch_idx with block_table", dict(cache_batch_idx=torch.zeros(2, dtype=torch.int32)),
         "cache_batch_idx cannot be combined with block_table"),
        ("leftpad past seqlens", dict(cache_leftpad=torch.tensor([11, 0], dtype=torch.int32)),
         r"cache_leftpad\[0\] = 11 must be in \[0, cache_seqlens\[0\] = 10\]"),
        ("rotary too short", dict(rotary_cos=torch.ones(12, 4), rotary_sin=torch.zeros(12, 4)),
         "rotary_cos and rotary_sin have 12 positions but sequence 0 reaches position 12"),
        ("rotary too wide", dict(rotary_cos=torch.ones(40, 9), rotary_sin=torch.zeros(40, 9)),
         r"rotary_dim <= headdim \(16\)"),
        ("v_cache of other pages", dict(v_cache=torch.randn(5, 16, 2, 16)), "k_cache and v_cache must agree"),
        ("negative num_splits", dict(num_splits=-1), "num_splits must be an int >= 0"),
        ("k of other dtype", dict(k=k_new.half(), v=k_new.half()), "k must have q's dtype"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_is_refused_before_the_cache_is_written(case):
    _, replaced, pattern = case
    g = _generator(11)
    k_cache, v_cache = torch.randn(4, 16, 2, 16, generator=g), torch.randn(4, 16, 2, 16, generator=g)
    good = dict(q=torch.randn(2, 1, 4, 16, generator=g), k_cache=k_cache, v_cache=v_cache,
                k=torch.randn(2, 3, 2, 16, generator=g), v=torch.randn(2, 3, 2, 16, generator=g),
                cache_seqlens=torch.tensor([10, 12], dtype=torch.int32),
                block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32))
    before = k_cache.clone(), v_cache.clone()
    with pytest.raises((ValueError, TypeError, RuntimeError), match=pattern):
        mfa_torch.flash_attn_with_kvcache(**{**good, **replaced})
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1]), "the cache was written"


def test_varlen_block_table_bad_input():
    cache = Cache(torch.float32, 2, 1, 8, 8, 16, 8)
    q = torch.randn(3, 1, 8)
    cu_q, cu_k = torch.tensor([0, 1, 3], dtype=torch.int32), torch.tensor([0, 5, 22], dtype=torch.int32)
    with pytest.raises(ValueError, match="from cu_seqlens_k or cache_seqlens.* reach cache position 17, beyond the 16"):
        mfa_torch.flash_attn_varlen_func(q, cache.k, cache.v, cu_q, cu_k, 2, 16, block_table=cache.block_table)
    with pytest.raises(ValueError, match=r"block_table must be an int32 tensor of shape \(2, max_pages\)"):
        mfa_torch.flash_attn_varlen_func(q, cache.k, cache.v, cu_q, cu_k, 2, 16, block_table=cache.block_table[:1])
    with pytest.raises(ValueError, match="dropout_p must be 0 with block_table"):
        mfa_torch.flash_attn_varlen_func(q, cache.k, cache.v, cu_q, cu_k, 2, 16, dropout_p=0.1,
                                         block_table=cache.block_table)
    with pytest.raises(ValueError, match="k must be 4-D"):
        mfa_torch.flash_attn_varlen_func(q, cache.k[0], cache.v[0], cu_q, cu_k, 2, 16, block_table=cache.block_table)


def test_scale_default_is_the_head_dim():
    cache = Cache(torch.float64, 1, 1, 16, 16, 8, None)
    q = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    out = mfa_torch.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=8)
    given = mfa_torch.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=8, softmax_scale=1 / math.sqrt(16))
    assert torch.equal(out, given)
