"""mfa_torch.flex_attention with the BlockMasks people build (causal, sliding window, prefix-LM, document masks of
packed sequences, a random block-sparse mask), forward and backward, on the reference route and on the Metal
kernels under the emulator, against the fp64 oracle given the dense equivalent mask (2x-PyTorch-error rule); the
tile counters show that exactly the non-empty blocks are computed; score_mod on the reference route; the patch."""
import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import mfa_torch
from mfa_torch import block_masks, routing
from mfa_torch.emulator import profile
from mfa_torch.metal import attention as metal_attention
from oracle import assert_rule, attention_fp64, torch_attention_same_dtype

BACKENDS = ["reference", "emulator"]
DOCUMENTS = torch.tensor([0] * 30 + [1] * 45 + [2] * 25)  # the document of each of 100 packed tokens


def causal(b, h, q, kv):
    return q >= kv


def sliding_window(b, h, q, kv):
    return (q >= kv) & (q - kv <= 24)


def prefix_lm(b, h, q, kv):
    return (kv < 20) | (q >= kv)


def document(b, h, q, kv):
    return (DOCUMENTS[q] == DOCUMENTS[kv]) & (q >= kv)


_ON = torch.rand(8, 8, generator=torch.Generator().manual_seed(7)) < 0.4  # which 16 x 16 blocks attend


def block_sparse(b, h, q, kv):
    return _ON[q // 16, kv // 16]


def per_head(b, h, q, kv):  # a mask that differs by batch and head: causal with a window of 10 + 7 b + 5 h
    return (q >= kv) & (q - kv <= 10 + 7 * b + 5 * h)


def _dense(mask_mod, B, H, L, S):
    b, h = torch.arange(B).view(-1, 1, 1, 1), torch.arange(H).view(1, -1, 1, 1)
    return mask_mod(b, h, torch.arange(L).view(1, 1, -1, 1), torch.arange(S).view(1, 1, 1, -1)).expand(B, H, L, S)


def _inputs(B, Hq, Hk, L, S, E, Ev, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=g).to(dtype).requires_grad_() for H, n, d in
            ((Hq, L, E), (Hk, S, E), (Hk, S, Ev))]


def _check_against_oracle(backend, mask_mod, mask_b, mask_h, shape, dtype, block_size, **kwargs):
    B, Hq, Hk, L, S, E, Ev = shape
    q, k, v = _inputs(*shape, dtype)
    block_mask = create_block_mask(mask_mod, mask_b, mask_h, L, S, device="cpu", BLOCK_SIZE=block_size)
    with mfa_torch.backend(backend):
        out, lse = mfa_torch.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=Hq != Hk, return_lse=True,
                                            **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    dense = _dense(mask_mod, mask_b or 1, mask_h or 1, L, S)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_fp64(*leaves, mask=dense, **kwargs)
    ref_grads = torch.autograd.grad(ref, leaves, grad.double())
    same = [t.detach().requires_grad_() for t in (q, k, v)]
    t_out = torch_attention_same_dtype(*same, mask=dense, **kwargs)[0]
    t_grads = torch.autograd.grad(t_out, same, grad)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_rule("out", out, t_out, ref, dtype)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    assert_rule("lse", lse, None, ref_lse, dtype)
    for name, ours, want, theirs in zip(("dq", "dk", "dv"), grads, ref_grads, t_grads):
        assert_rule(name, ours, theirs, want, dtype)


MASKS = [  # (mask_mod, B, H of the mask, dtype, BLOCK_SIZE)
    (causal, None, None, torch.float16, 128),
    (sliding_window, None, None, torch.bfloat16, (32, 16)),
    (prefix_lm, None, None, torch.float32, (48, 20)),  # blocks that are not multiples of the kernels' tiles
    (document, None, None, torch.float16, 16),
    (block_sparse, None, None, torch.float16, 16),
    (per_head, 2, 4, torch.float32, (16, 32)),  # one mask per (batch, head)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_mod, mask_b, mask_h, dtype, block_size", MASKS,
                         ids=[m[0].__name__ for m in MASKS])
def test_block_masks_forward_and_backward(backend, mask_mod, mask_b, mask_h, dtype, block_size):
    _check_against_oracle(backend, mask_mod, mask_b, mask_h, (2, 4, 2, 100, 100, 24, 16), dtype, block_size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_the_mask_empties_give_zero_and_minus_infinite_lse(backend):
    """Queries 50.. attend nothing (their blocks are empty), and a scale."""
    def first_half(b, h, q, kv):
        return (q < 50) & (kv <= q)
    _check_against_oracle(backend, first_half, None, None, (1, 2, 2, 80, 70, 16, 16), torch.float16, 16, scale=0.3)


@pytest.mark.emulator
def test_tile_counters_count_exactly_the_non_empty_blocks():
    """Mask blocks of the kernels' own tile sizes (fp16, E = 16 on Apple7's table: 32 query rows, 128 keys forward;
    32 x 32 backward): every threadgroup computes exactly its non-empty mask blocks, forward, dQ and dK/dV."""
    B, H, L, S, E = 1, 2, 256, 512, 16
    q, k, v = (t.detach() for t in _inputs(B, H, H, L, S, E, E, torch.float16))
    args = (None, None, None, None, L, S, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
    for block_size, passes in (((32, 128), "forward"), ((32, 32), "backward")):
        block_mask = create_block_mask(block_sparse_wide, None, None, L, S, device="cpu", BLOCK_SIZE=block_size)
        blocks = block_masks.compact(block_mask, B, H, L, S, "cpu")
        non_empty = int((blocks.states != block_masks.EMPTY).sum()) * H  # the mask is shared by the heads
        assert 0 < non_empty < H * blocks.states.numel()
        out, stats, tiles = metal_attention.forward("emulator", q, k, v, *args, blocks=blocks, family="apple7",
                                                    count_tiles=True)
        if passes == "forward":
            assert int(tiles.sum()) == non_empty
            continue
        *_, dq_tiles, dkdv_tiles = metal_attention.backward(
            "emulator", torch.randn_like(out), q, k, v, out, stats, *args, False, blocks=blocks, family="apple7",
            count_tiles=True)
        assert int(dq_tiles.sum()) == non_empty and int(dkdv_tiles.sum()) == non_empty


@pytest.mark.emulator
def test_the_dkdv_kernel_walks_the_query_lists(monkeypatch):
    """The dK/dV kernel computes the query blocks its key block's q-side list names, not what the states say: with
    the first listed block of key block 0 left off its list, exactly that block goes uncomputed (one fewer tile per
    head), dK and dV of keys 0..31 change and every other key's are bit for bit the same (fp16, 32 x 32 mask blocks
    on Apple7's backward tiles of 32 x 32)."""
    B, H, L, S, E = 1, 2, 256, 512, 16
    q, k, v = (t.detach() for t in _inputs(B, H, H, L, S, E, E, torch.float16))
    blocks = block_masks.compact(create_block_mask(block_sparse_wide, None, None, L, S, device="cpu",
                                                   BLOCK_SIZE=(32, 32)), B, H, L, S, "cpu")
    args = (None, None, None, None, L, S, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
    out, stats = metal_attention.forward("emulator", q, k, v, *args, blocks=blocks, family="apple7")
    grad = torch.randn_like(out)

    def backward():
        return metal_attention.backward("emulator", grad, q, k, v, out, stats, *args, False, blocks=blocks,
                                        family="apple7", count_tiles=True)
    _, dk, dv, _, _, tiles = backward()
    lists = block_masks.query_lists(blocks.states)
    assert int(lists[0, 0, 0, 0]) > 0

    def shortened(states):
        cut = lists.clone()
        cut[0, 0, 0, 0] -= 1
        cut[0, 0, 0, 1:-1] = lists[0, 0, 0, 2:]
        return cut
    monkeypatch.setattr(block_masks, "query_lists", shortened)
    _, dk_cut, dv_cut, _, _, tiles_cut = backward()
    assert int(tiles_cut.sum()) == int(tiles.sum()) - H
    for full, cut in ((dk, dk_cut), (dv, dv_cut)):
        assert not torch.equal(full[:, :, :32], cut[:, :, :32])
        assert torch.equal(full[:, :, 32:], cut[:, :, 32:])


@pytest.mark.emulator
def test_sliced_kernels_skip_empty_blocks_at_large_head_dims():
    """E = Ev = 512 (O in column slices sharing P, 32 rows x 64 keys a threadgroup; dQ 32 rows x 64 keys; dK/dV 16
    keys x 64 queries) with a block-sparse mask of 32 x 64 blocks: output, lse and gradients against the fp64 oracle,
    and each kernel computes exactly the non-empty blocks (the one 64-query block of each dK/dV threadgroup spans two
    mask blocks of its key block)."""
    B, H, L, S, E = 1, 2, 64, 256, 512
    _check_against_oracle("emulator", block_sparse_wide, None, None, (B, H, H, L, S, E, E), torch.float16, (32, 64))
    q, k, v = (t.detach() for t in _inputs(B, H, H, L, S, E, E, torch.float16))
    blocks = block_masks.compact(create_block_mask(block_sparse_wide, None, None, L, S, device="cpu",
                                                   BLOCK_SIZE=(32, 64)), B, H, L, S, "cpu")
    args = (None, None, None, None, L, S, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
    with profile() as prof:
        *_, tiles = metal_attention.forward("emulator", q, k, v, *args, blocks=blocks, family="apple9",
                                            count_tiles=True)
    defines = prof.launches[0]["defines"]
    assert (defines["MFA_BLOCK_Q"], defines["MFA_BLOCK_K"], defines["MFA_SLICE_DIM"]) == ("32", "64", "256")
    non_empty = int((blocks.states != block_masks.EMPTY).sum()) * H
    assert 0 < non_empty < H * blocks.states.numel() and int(tiles.sum()) == non_empty
    out, stats = metal_attention.forward("emulator", q, k, v, *args, blocks=blocks, family="apple9")
    with profile() as prof:
        *_, dq_tiles, dkdv_tiles = metal_attention.backward(
            "emulator", torch.randn_like(out), q, k, v, out, stats, *args, False, blocks=blocks, family="apple9",
            count_tiles=True)
    dkdv = [launch["defines"] for launch in prof.launches if launch["kernel"] == "attention_backward_dkdv"][0]
    assert (dkdv["MFA_SLICES"], dkdv["MFA_BLOCK_KV"], dkdv["MFA_BLOCK_Q"]) == ("4", "16", "64")
    key_blocks_attended = int((blocks.states != block_masks.EMPTY).any(-2).sum()) * H
    assert int(dq_tiles.sum()) == non_empty and int(dkdv_tiles.sum()) == key_blocks_attended * 4


def block_sparse_wide(b, h, q, kv):
    return _ON[q // 32, kv // 64]


def test_score_mod_runs_on_the_reference_route_with_a_warning(monkeypatch):
    """A relative-position bias and a tanh softcap as score_mod, with a causal block mask, forward and backward:
    chunked over queries (the chunk forced small here), against the fp64 oracle given the same scores."""
    monkeypatch.setattr(routing, "_warned", set())
    monkeypatch.setattr(mfa_torch.flex, "_SCORES_PER_CHUNK", 2 * 3 * 40 * 17)  # chunks of 17 query rows
    bias = torch.randn(4, 80, generator=torch.Generator().manual_seed(3))  # per head, per distance

    def score_mod(score, b, h, q, kv):
        return 20 * torch.tanh((score + bias[h, (q - kv).abs()]) / 20)

    q, k, v = _inputs(2, 4, 4, 40, 60, 16, 8, torch.float32)
    block_mask = create_block_mask(causal, None, None, 40, 60, device="cpu", BLOCK_SIZE=16)
    with mfa_torch.backend("emulator"):
        assert "score_mod" in mfa_torch.flex.explain(q, k, v, score_mod=score_mod)
        with pytest.warns(UserWarning, match="score_mod: mfa_torch runs it with PyTorch operations"):
            out, lse = mfa_torch.flex_attention(q, k, v, score_mod, block_mask, return_lse=True)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    grads = torch.autograd.grad(out, (q, k, v), grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    b, h = torch.arange(2).view(-1, 1, 1, 1), torch.arange(4).view(1, -1, 1, 1)
    qi, kv = torch.arange(40).view(1, 1, -1, 1), torch.arange(60).view(1, 1, 1, -1)
    s = score_mod(leaves[0] @ leaves[1].transpose(-1, -2) / 4.0, b, h, qi, kv)
    s = s.masked_fill(~causal(b, h, qi, kv), float("-inf"))
    ref = torch.softmax(s, -1) @ leaves[2]
    ref_grads = torch.autograd.grad(ref, leaves, grad.double())
    assert_rule("out", out, None, ref, torch.float32)
    assert_rule("lse", lse, None, torch.logsumexp(s, -1), torch.float32)
    for name, ours, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_rule(name, ours, None, want, torch.float32)


def test_patch_routes_torch_flex_attention_through_mfa_torch():
    import torch.nn.attention.flex_attention as torch_flex
    original = torch_flex.flex_attention
    q, k, v = (t.detach() for t in _inputs(1, 2, 2, 40, 40, 16, 16, torch.float32))
    block_mask = create_block_mask(causal, None, None, 40, 40, device="cpu", BLOCK_SIZE=16)
    with mfa_torch.patch(attention=False, flex_attention=True):
        assert torch_flex.flex_attention is not original
        assert "mfa_torch.flex_attention" in torch_flex.flex_attention.explain(q, k, v, block_mask=block_mask)
        with mfa_torch.backend("emulator"):
            out = torch_flex.flex_attention(q, k, v, block_mask=block_mask)
    assert torch_flex.flex_attention is original
    ref, _ = attention_fp64(q.double(), k.double(), v.double(), causal="upper_left")
    assert_rule("out", out, None, ref, torch.float32)


@pytest.mark.parametrize("call, message", [
    (lambda q, k, v, bm: mfa_torch.flex_attention(q, k, v, block_mask=bm(41, 40)), "built for .* 40 queries"),
    (lambda q, k, v, bm: mfa_torch.flex_attention(q, k, v, block_mask="causal"), "must be a .*BlockMask"),
    (lambda q, k, v, bm: mfa_torch.flex_attention(q[0], k, v), "query must be 4-D"),
    (lambda q, k, v, bm: mfa_torch.flex_attention(q, k[:, :1], v[:, :1]), "pass enable_gqa=True"),
    (lambda q, k, v, bm: mfa_torch.flex_attention(q, k.half(), v), "key .* must match query"),
])
def test_bad_arguments_are_clear_errors(call, message):
    q, k, v = (t.detach() for t in _inputs(1, 2, 2, 40, 40, 16, 16, torch.float32))

    def block_mask(L, S):
        return create_block_mask(causal, None, None, L, S, device="cpu", BLOCK_SIZE=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((ValueError, TypeError), match=message):
            call(q, k, v, block_mask)


def test_a_drop_in_for_torch_flex_attention():
    """The same output and lse (natural log) as PyTorch's own flex_attention on the same BlockMask and score_mod
    (float32 on the CPU, PyTorch's unfused path), to float32 rounding."""
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v = (t.detach() for t in _inputs(1, 4, 2, 64, 80, 16, 8, torch.float32))
    block_mask = create_block_mask(sliding_window, None, None, 64, 80, device="cpu", BLOCK_SIZE=16)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + 0.05 * (q_idx - kv_idx) * (h + 1)
    for mod in (None, score_mod):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch's unfused path and mfa_torch's score_mod route both warn
            theirs = flex_attention(q, k, v, mod, block_mask, enable_gqa=True, return_lse=True)
            ours = mfa_torch.flex_attention(q, k, v, mod, block_mask, enable_gqa=True, return_lse=True)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 90), S=st.integers(1, 90), block_q=st.integers(1, 40), block_k=st.integers(1, 70),
       heads=st.sampled_from([1, 3]), seed=st.integers(0, 2 ** 16))
def test_the_compact_form_holds_exactly_the_mask(L, S, block_q, block_k, heads, seed):
    """block_masks.compact then block_masks.allowed give back every element of a random mask_mod (per head, block
    sizes of any size: rows of one or several 32-bit words, blocks cut by the sequences' ends), and a block is
    EMPTY or FULL only where the mask says so."""
    table = torch.rand(heads, L, S, generator=torch.Generator().manual_seed(seed)) < 0.5
    table[:, : L // 2] = True  # full blocks too

    def mask_mod(b, h, q, kv):
        return table[h, q, kv]
    block_mask = create_block_mask(mask_mod, None, heads, L, S, device="cpu", BLOCK_SIZE=(block_q, block_k))
    blocks = block_masks.compact(block_mask, 2, heads, L, S, "cpu")
    i0, j0 = L // 3, S // 4  # an arbitrary window of rows and keys
    got = block_masks.allowed(*blocks, i0, L, j0, S)
    assert torch.equal(got[0], table[:, i0:, j0:])
    for qb, kb in itertools.product(range(blocks.states.shape[2]), range(blocks.states.shape[3])):
        part = table[:, qb * block_q:(qb + 1) * block_q, kb * block_k:(kb + 1) * block_k]
        state = blocks.states[0, :, qb, kb]
        assert torch.equal(state == block_masks.EMPTY, ~part.flatten(1).any(1))
        assert bool((~part.flatten(1).all(1))[state == block_masks.FULL].sum() == 0)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 90), S=st.integers(1, 90), block_q=st.integers(1, 40), block_k=st.integers(1, 70),
       heads=st.sampled_from([1, 3]), seed=st.integers(0, 2 ** 16))
def test_query_lists_hold_the_block_masks_q_side_indices(L, S, block_q, block_k, heads, seed):
    """block_masks.query_lists of the compact states names, per key block, the query blocks of torch's BlockMask
    q-side indices (partial and full together) in ascending order."""
    table = torch.rand(heads, L, S, generator=torch.Generator().manual_seed(seed)) < 0.3
    table[:, : L // 3] = True  # full blocks too

    def mask_mod(b, h, q, kv):
        return table[h, q, kv]
    block_mask = create_block_mask(mask_mod, None, heads, L, S, device="cpu", BLOCK_SIZE=(block_q, block_k))
    lists = block_masks.query_lists(block_masks.compact(block_mask, 1, heads, L, S, "cpu").states)
    assert lists.shape == (1, heads, -(-S // block_k), 1 + -(-L // block_q)) and lists.dtype == torch.int32
    for h, kb in itertools.product(range(heads), range(lists.shape[2])):
        partial = block_mask.q_indices[0, h, kb, :block_mask.q_num_blocks[0, h, kb]].tolist()
        full = block_mask.full_q_indices[0, h, kb, :block_mask.full_q_num_blocks[0, h, kb]].tolist()
        count = int(lists[0, h, kb, 0])
        assert lists[0, h, kb, 1:1 + count].tolist() == sorted(set(partial) | set(full))
