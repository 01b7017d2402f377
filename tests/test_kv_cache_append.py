"""mfa::kv_cache_append (KV-cache append with fused rotary embeddings) and mfa::rotary_embedding, on the Metal kernels
under the MSL emulator (shaders/kv_cache_append.metal, shaders/rotary_embedding.metal; marked `emulator`, CPU
tensors) and on the reference route (PyTorch operations), against an fp64 oracle written here.

The oracle rotates pair by pair in float64 from the inputs as given. Cache rows the call does not write must be bit
for bit what they were; written rows hold the new keys within the 2x-PyTorch-error rule (PyTorch's error: the same
rotation with torch operations in the inputs' dtype), and exactly the new values and the keys' dims past rotary_dim.
Bad arguments raise errors naming them, and leave the caches as they were.

Caches are views of users' (pages, page_size, Hk, D) tensors, new tokens of (B, Lnew, Hk, D) tensors, transposed to
the canonical forms, so every kernel reads and writes through strides.
"""
import re

import pytest
import torch

import mfa_torch
from mfa_torch import _C, routing
from mfa_torch.metal import kv_cache as metal_kv_cache
from kernel_routes import recorded_plans
from oracle import assert_rule

ROUTES = [pytest.param("emulator", marks=pytest.mark.emulator, id="emulator"),
          pytest.param("reference", id="reference")]


# ---- the oracle and PyTorch's yardstick ---------------------------------------------------------------------------

def tables(length, half, dtype, base=10000.0):
    """cos, sin (length, half) of the angles position * base^(-i / half), in `dtype`."""
    angles = torch.arange(length, dtype=torch.float64)[:, None] * base ** (-torch.arange(half, dtype=torch.float64)
                                                                           / half)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def pair(i, half, interleaved):
    return (2 * i, 2 * i + 1) if interleaved else (i, i + half)


def rotate_fp64(x, at, cos, sin, interleaved):
    """x (..., L, D) rotated pair by pair in float64 at positions `at` (broadcast to (..., L))."""
    out = x.double().clone()
    x = x.double()
    half = 0 if cos is None else cos.shape[1]
    for i in range(half):
        c, s = cos.double()[at, i], sin.double()[at, i]
        a, b = pair(i, half, interleaved)
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., a] * s + x[..., b] * c
    return out


def rotate_same_dtype(x, at, cos, sin, interleaved):
    """The same rotation with torch operations in x's dtype: every operation rounded to it."""
    out = x.clone()
    half = 0 if cos is None else cos.shape[1]
    for i in range(half):
        c, s = cos.to(x.dtype)[at, i], sin.to(x.dtype)[at, i]
        a, b = pair(i, half, interleaved)
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., a] * s + x[..., b] * c
    return out


# ---- kv_cache_append against the oracle ---------------------------------------------------------------------------

# name: (dtype, page_size (None: a contiguous cache of one page per sequence), Hk, D, Dv, rotary_dim (0: no rotary),
# interleaved, tables' dtype (None: the inputs'), Lnew, positions)
CASES = {
    "fp16-page8-neox-cross": (torch.float16, 8, 3, 64, 64, 64, False, None, 20, [3, 17]),
    "bf16-page24-gptj-partial": (torch.bfloat16, 24, 1, 40, 40, 32, True, None, 20, [15, 40, 0]),
    "fp32-page256-neox-edges": (torch.float32, 256, 3, 40, 24, 40, False, None, 1, [255, 256]),
    "fp16-contiguous-none": (torch.float16, None, 1, 64, 64, 0, False, None, 20, [0, 30, 7]),
    "bf16-page8-gptj-fp32tables": (torch.bfloat16, 8, 3, 64, 40, 32, True, torch.float32, 1, [7, 8, 0]),
    "fp32-page24-gptj-cross": (torch.float32, 24, 1, 64, 64, 64, True, None, 20, [4, 30]),
    "fp16-page24-neox-fp32tables": (torch.float16, 24, 3, 40, 40, 32, False, torch.float32, 1, [23, 24]),
    "fp32-page8-none": (torch.float32, 8, 3, 40, 64, 0, False, None, 20, [1, 9]),
    "bf16-contiguous-neox": (torch.bfloat16, None, 3, 64, 64, 64, False, None, 1, [39, 0]),
    "fp16-page256-gptj-cross": (torch.float16, 256, 1, 40, 40, 40, True, None, 20, [250, 0]),
    "bf16-page8-odd-dims-fp32tables": (torch.bfloat16, 8, 3, 41, 33, 32, True, torch.float32, 20, [0, 4, 3]),
}
SEQLEN_CACHE = 50  # the contiguous caches' capacity (page_size) per sequence
SEQLEN_RO = 600


def make_case(name, seed=0):
    """The call's arguments (caches as transposed views of users' tensors) and the caches' contents before it."""
    dtype, page_size, Hk, D, Dv, rotary_dim, interleaved, table_dtype, Lnew, positions = CASES[name]
    g = torch.Generator().manual_seed(seed)
    B = len(positions)
    if page_size is None:  # one page per sequence, in another order than the batch (FlashAttention's cache_batch_idx)
        page_size, max_pages, pages = SEQLEN_CACHE, 1, B + 1
    else:  # shuffled pages, two never used; the entries past each sequence's new tokens are never read
        max_pages = max(-(-(p + Lnew) // page_size) for p in positions) + 1
        pages = B * max_pages + 2
    block_table = torch.randperm(pages, generator=g)[:B * max_pages].view(B, max_pages)
    rand = lambda *shape: torch.randn(shape, generator=g).to(dtype)  # noqa: E731
    args = dict(k_cache=rand(pages, page_size, Hk, D).transpose(1, 2),
                v_cache=rand(pages, page_size, Hk, Dv).transpose(1, 2),
                k=rand(B, Lnew, Hk, D).transpose(1, 2), v=rand(B, Lnew, Hk, Dv).transpose(1, 2),
                block_table=block_table.to(torch.int32), positions=torch.tensor(positions, dtype=torch.int32),
                rotary_cos=None, rotary_sin=None, rotary_interleaved=interleaved)
    if rotary_dim:
        args["rotary_cos"], args["rotary_sin"] = tables(SEQLEN_RO, rotary_dim // 2, table_dtype or dtype)
    return args


def append(route, args):
    with mfa_torch.backend(route):
        torch.ops.mfa.kv_cache_append(*args.values())


def check_append(args, before_k, before_v):
    """The caches after the call (args) against the oracle, given their contents before it."""
    k_cache, v_cache, k, v = args["k_cache"], args["v_cache"], args["k"], args["v"]
    cos, sin, interleaved = args["rotary_cos"], args["rotary_sin"], args["rotary_interleaved"]
    B, Hk, Lnew, D = k.shape
    page_size = k_cache.shape[2]
    written = torch.zeros(k_cache.shape[0], page_size, dtype=torch.bool)
    pages, rows, at = (torch.zeros(B, Lnew, dtype=torch.int64) for _ in range(3))
    for b in range(B):
        for t in range(Lnew):
            position = int(args["positions"][b]) + t
            pages[b, t] = int(args["block_table"][b, position // page_size])
            rows[b, t] = position % page_size
            at[b, t] = position
            written[pages[b, t], rows[b, t]] = True
    assert int(written.sum()) == B * Lnew  # the case writes distinct rows
    for name, after, before in (("k_cache", k_cache, before_k), ("v_cache", v_cache, before_v)):
        kept = lambda t: t.transpose(1, 2)[~written]  # noqa: E731  (rows, Hk, D) of the rows not written
        assert torch.equal(kept(after), kept(before)), f"{name}: rows the call does not write changed"
    ours_k = k_cache.transpose(1, 2)[pages, rows].transpose(1, 2)  # (B, Hk, Lnew, D): the written rows
    ours_v = v_cache.transpose(1, 2)[pages, rows].transpose(1, 2)
    assert torch.equal(ours_v, v), "v_cache: the new values are not copied exactly"
    rotary_dim = 0 if cos is None else 2 * cos.shape[1]
    assert torch.equal(ours_k[..., rotary_dim:], k[..., rotary_dim:]), "k_cache: the dims past rotary_dim changed"
    if rotary_dim:
        ref = rotate_fp64(k, at[:, None, :], cos, sin, interleaved)
        yardstick = rotate_same_dtype(k, at[:, None, :], cos, sin, interleaved)
        assert_rule("k_cache (rotated)", ours_k[..., :rotary_dim], yardstick[..., :rotary_dim], ref[..., :rotary_dim],
                    k.dtype)


def ran(plans):
    return [launch.kernel for plan in plans for launch in plan.launches]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", list(CASES))
def test_append_against_the_oracle(route, name, monkeypatch):
    plans = recorded_plans(monkeypatch)
    args = make_case(name)
    before_k, before_v = args["k_cache"].clone(), args["v_cache"].clone()
    append(route, args)
    check_append(args, before_k, before_v)
    assert ran(plans) == (["kv_cache_append"] if route == "emulator" else [])  # one launch writes both caches


@pytest.mark.parametrize("route", ROUTES)
def test_append_routes_agree_bit_for_bit(route):
    """Both routes round the float rotation once: the emulator's kernel and the reference give the same caches (the
    fp64 check above allows either rounding; this pins that they agree on these inputs)."""
    results = []
    for r in ("reference", route):
        args = make_case("fp16-page8-neox-cross", seed=3)
        append(r, args)
        results.append((args["k_cache"], args["v_cache"]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("route", ROUTES)
def test_untouched_block_table_entries_may_be_anything(route):
    """Only the entries the new tokens are written through are read: padding (-1, or past the pool) elsewhere is
    fine, like FlashAttention's padded block tables."""
    args = make_case("fp16-page8-neox-cross")  # positions 3..22 and 17..36 of 8-row pages: blocks 0-2 and 2-4
    args["block_table"][0, 3:] = -1
    args["block_table"][1, :2] = 10 ** 6
    before_k, before_v = args["k_cache"].clone(), args["v_cache"].clone()
    append(route, args)
    check_append(args, before_k, before_v)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("empty", ["batch", "tokens"])
def test_empty_appends_write_nothing(route, empty):
    args = make_case("bf16-page24-gptj-partial")
    if empty == "batch":
        for name in ("k", "v", "block_table", "positions"):
            args[name] = args[name][:0]
    else:
        args["k"], args["v"] = args["k"][:, :, :0], args["v"][:, :, :0]
        args["positions"][0] = 10 ** 6  # no token at it: nothing to check
    before_k, before_v = args["k_cache"].clone(), args["v_cache"].clone()
    append(route, args)
    assert torch.equal(args["k_cache"], before_k) and torch.equal(args["v_cache"], before_v)


# ---- rotary_embedding against the oracle --------------------------------------------------------------------------

# name: (dtype, H, L, D, rotary_dim, interleaved, same_position, tables' dtype (None: the inputs'), positions)
ROTARY_CASES = {
    "fp16-neox": (torch.float16, 4, 7, 64, 64, False, False, None, [5, 0]),
    "bf16-gptj-partial-same": (torch.bfloat16, 3, 5, 40, 32, True, True, torch.float32, [9, 100, 3]),
    "fp32-gptj": (torch.float32, 2, 9, 40, 40, True, False, None, [17]),
    "fp16-neox-partial-same-fp32tables": (torch.float16, 1, 1, 40, 32, False, True, torch.float32, [0, 599]),
    "bf16-neox": (torch.bfloat16, 2, 6, 64, 64, False, False, None, [594, 1]),
    "fp32-neox-odd-dim": (torch.float32, 2, 3, 41, 32, False, False, None, [2]),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", list(ROTARY_CASES))
def test_rotary_embedding_against_the_oracle(route, name, monkeypatch):
    plans = recorded_plans(monkeypatch)
    dtype, H, L, D, rotary_dim, interleaved, same, table_dtype, positions = ROTARY_CASES[name]
    g = torch.Generator().manual_seed(len(name))
    B = len(positions)
    qkv = torch.randn(B, L, 3, H, D, generator=g).to(dtype)  # x: the queries of a packed qkv tensor, read in place
    x = qkv[:, :, 0].transpose(1, 2)
    cos, sin = tables(SEQLEN_RO, rotary_dim // 2, table_dtype or dtype)
    pos = torch.tensor(positions, dtype=torch.int32)
    with mfa_torch.backend(route):
        out = torch.ops.mfa.rotary_embedding(x, pos, cos, sin, interleaved, same)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    at = pos.long()[:, None, None] + (0 if same else torch.arange(L))
    ref = rotate_fp64(x, at.expand(B, 1, L), cos, sin, interleaved)
    yardstick = rotate_same_dtype(x, at.expand(B, 1, L), cos, sin, interleaved)
    assert_rule("out (rotated)", out[..., :rotary_dim], yardstick[..., :rotary_dim], ref[..., :rotary_dim], dtype)
    assert torch.equal(out[..., rotary_dim:], x[..., rotary_dim:])
    assert ran(plans) == (["rotary_embedding"] if route == "emulator" else [])


def test_float64_takes_the_reference_route_on_the_emulator_backend(monkeypatch):
    """Apple GPUs have no float64: such calls take the reference route, with a one-time warning."""
    monkeypatch.setattr(routing, "_warned", set())
    plans = recorded_plans(monkeypatch)
    args = make_case("fp32-page24-gptj-cross")
    for name in ("k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin"):
        args[name] = args[name].double()
    before_k, before_v = args["k_cache"].clone(), args["v_cache"].clone()
    with pytest.warns(UserWarning, match="float64"):
        append("emulator", args)
    check_append(args, before_k, before_v)
    x = torch.randn(1, 2, 3, 64, dtype=torch.float64)
    with mfa_torch.backend("emulator"):
        out = torch.ops.mfa.rotary_embedding(x, torch.tensor([4], dtype=torch.int32), args["rotary_cos"],
                                             args["rotary_sin"], False, False)
    ref = rotate_fp64(x, (4 + torch.arange(3)).view(1, 1, 3), args["rotary_cos"], args["rotary_sin"], False)
    assert (out - ref).abs().max() < 1e-12
    assert ran(plans) == []


# ---- bad arguments ------------------------------------------------------------------------------------------------

def _replace(name, make):
    return lambda a: a.update({name: make(a)})


BAD_APPEND = {  # name: (edit of a valid call's arguments, words the error must contain)
    "k_cache-3d": (_replace("k_cache", lambda a: a["k_cache"][..., 0]), "k_cache must be 4-D"),
    "k_cache-broadcast": (_replace("k_cache", lambda a: a["k_cache"][:, :1].expand(-1, 3, -1, -1)),
                          "k_cache must not be broadcast"),
    "v_cache-dtype": (_replace("v_cache", lambda a: a["v_cache"].float()), "v_cache has dtype"),
    "v_cache-pages": (_replace("v_cache", lambda a: a["v_cache"][:-1]), "v_cache"),
    "k_cache-dense": (_replace("k_cache", lambda a: a["k_cache"].repeat_interleave(2, -1)[..., ::2]),
                      "k_cache's last dim must be dense"),
    "k-heads": (_replace("k", lambda a: a["k"][:, :2]), "k must have shape"),
    "k-dense": (_replace("k", lambda a: a["k"].repeat_interleave(2, -1)[..., ::2]), "k's last dim must be dense"),
    "v-tokens": (_replace("v", lambda a: a["v"][:, :, :3]), "v must have shape"),
    "k-int": (_replace("k", lambda a: a["k"].to(torch.int16)), "k must be float16, bfloat16, float32 or float64"),
    "block_table-int64": (_replace("block_table", lambda a: a["block_table"].long()), "block_table must be int32"),
    "block_table-batch": (_replace("block_table", lambda a: a["block_table"][:1]), "block_table must have shape"),
    "block_table-past-pool": (lambda a: a["block_table"].__setitem__((1, 3), 14), "block_table[1, 3] = 14"),
    "block_table-negative": (lambda a: a["block_table"].__setitem__((0, 0), -1), "block_table[0, 0] = -1"),
    "positions-int64": (_replace("positions", lambda a: a["positions"].long()), "positions must be int32"),
    "positions-shape": (_replace("positions", lambda a: a["positions"][:1]), "positions must have shape"),
    "positions-negative": (lambda a: a["positions"].__setitem__(1, -2), "positions must be >= 0"),
    "positions-past-capacity": (lambda a: a["positions"].__setitem__(0, 30), "max_pages x page_size"),
    "positions-past-seqlen_ro": (lambda a: a.update(rotary_cos=a["rotary_cos"][:30], rotary_sin=a["rotary_sin"][:30]),
                                 "seqlen_ro"),
    "rotary_sin-missing": (_replace("rotary_sin", lambda a: None), "rotary_cos and rotary_sin must be given together"),
    "rotary_cos-dtype": (_replace("rotary_cos", lambda a: a["rotary_cos"].double()),
                         "rotary_cos must have the inputs' dtype"),
    "rotary_sin-shape": (_replace("rotary_sin", lambda a: a["rotary_sin"][:, :8]), "rotary_sin has shape"),
    "rotary_dim-past-head_dim": (lambda a: a.update(rotary_cos=tables(SEQLEN_RO, 40, torch.float16)[0],
                                                    rotary_sin=tables(SEQLEN_RO, 40, torch.float16)[1]),
                                 "rotary_dim"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("bad", list(BAD_APPEND))
def test_bad_append_arguments_are_named_and_write_nothing(route, bad):
    args = make_case("fp16-page8-neox-cross")  # 14 pages of 8 rows, max_pages 6, positions [3, 17] + 20 tokens
    k_cache, v_cache = args["k_cache"], args["v_cache"]  # the edit may replace them by views
    before_k, before_v = k_cache.clone(), v_cache.clone()
    edit, words = BAD_APPEND[bad]
    edit(args)
    with pytest.raises(RuntimeError, match=re.escape(words)):
        append(route, args)
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)


BAD_ROTARY = {
    "x-3d": (lambda a: a.update(x=a["x"][0]), "x must be 4-D"),
    "x-dense": (lambda a: a.update(x=a["x"].repeat_interleave(2, -1)[..., ::2]), "x's last dim must be dense"),
    "positions-shape": (lambda a: a.update(positions=a["positions"][:1]), "positions must have shape"),
    "positions-negative": (lambda a: a["positions"].__setitem__(0, -1), "positions must be >= 0"),
    "positions-past-seqlen_ro": (lambda a: a["positions"].__setitem__(1, SEQLEN_RO - 3), "seqlen_ro"),
    "rotary_cos-dtype": (lambda a: a.update(rotary_cos=a["rotary_cos"].half()), "rotary_cos must have the inputs'"),
    "rotary_sin-dtype": (lambda a: a.update(rotary_sin=a["rotary_sin"].float()), "rotary_sin has dtype"),
    "rotary_dim-past-head_dim": (lambda a: a.update(x=a["x"][..., :16]), "rotary_dim"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("bad", list(BAD_ROTARY))
def test_bad_rotary_arguments_are_named(route, bad):
    cos, sin = tables(SEQLEN_RO, 16, torch.bfloat16)
    args = dict(x=torch.randn(2, 3, 4, 32).to(torch.bfloat16), positions=torch.tensor([0, 5], dtype=torch.int32),
                rotary_cos=cos, rotary_sin=sin, interleaved=False, same_position=False)
    edit, words = BAD_ROTARY[bad]
    edit(args)
    with mfa_torch.backend(route), pytest.raises(RuntimeError, match=re.escape(words)):
        torch.ops.mfa.rotary_embedding(*args.values())


# ---- op registration, plans, checked modes ------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["kv_cache_append", "rotary_embedding"])
def test_the_ops_have_a_kernel_for_the_mps_dispatch_key(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mfa::{op}", "MPS")


@pytest.mark.parametrize("route", ROUTES)
def test_opcheck(route):
    """Schemas (the caches are the only mutated arguments), fake kernels, and the ops under torch.compile's tracing."""
    args = make_case("bf16-page24-gptj-partial")
    cos, sin = tables(64, 16, torch.float32)
    x = torch.randn(2, 3, 4, 40).half()
    with mfa_torch.backend(route):
        torch.library.opcheck(torch.ops.mfa.kv_cache_append.default, tuple(args.values()))
        torch.library.opcheck(torch.ops.mfa.rotary_embedding.default,
                              (x, torch.tensor([1, 7], dtype=torch.int32), cos, sin, True, False))


def _append_problem(**changes):
    p = _C.KvCacheAppendProblem()
    p.dtype, p.batch, p.kv_heads, p.new_len, p.head_dim, p.value_dim = "float16", 2, 3, 5, 40, 24
    p.pages, p.page_size, p.max_pages = 8, 16, 4
    p.k_cache_strides, p.v_cache_strides = [16 * 3 * 40, 40, 3 * 40], [16 * 3 * 24, 24, 3 * 24]
    p.k_strides, p.v_strides = [3 * 5 * 40, 5 * 40, 40], [3 * 5 * 24, 5 * 24, 24]
    p.block_table_strides, p.positions_stride = [4, 1], 1
    p.rotary.dtype, p.rotary.rotary_dim, p.rotary.length = "float32", 32, 100
    p.rotary.cos_strides = p.rotary.sin_strides = [16, 1]
    for name, value in changes.items():
        target, _, field = name.rpartition("__")
        setattr(p.rotary if target else p, field, value)
    return p


def test_append_plan_is_one_launch_of_one_thread_per_unit():
    (launch,) = _C.plan_kv_cache_append(_append_problem()).launches
    units = 32 // 2 + (40 - 32) // 2 + 24 // 2  # rotated pairs, copied key pairs, copied value pairs
    assert launch.kernel == "kv_cache_append" and launch.shader == "kv_cache_append.metal"
    assert dict(launch.defines) == {"MFA_T": "half", "MFA_ROTARY_T": "float"}
    assert list(launch.threads_per_threadgroup) == [256, 1, 1]
    assert list(launch.threadgroups) == [-(-2 * 3 * 5 * units // 256), 1, 1]
    assert [a.tensor for a in launch.arguments if a.tensor] == ["k_cache", "v_cache", "k", "v", "block_table",
                                                                "positions", "rotary_cos", "rotary_sin"]
    (plain,) = _C.plan_kv_cache_append(_append_problem(rotary__rotary_dim=0)).launches
    assert dict(plain.defines)["MFA_ROTARY_T"] == "half" and "rotary_cos" not in [a.tensor for a in plain.arguments]
    assert not _C.plan_kv_cache_append(_append_problem(new_len=0)).launches


@pytest.mark.parametrize("changes, words", [
    ({"dtype": "float64"}, "k_cache, v_cache, k and v must be float32, float16 or bfloat16"),
    ({"rotary__rotary_dim": 31}, "rotary_dim must be even"),
    ({"rotary__rotary_dim": 42}, "rotary_dim (42) must be <= the head dim (40)"),
    ({"rotary__dtype": "bfloat16"}, "rotary_cos and rotary_sin must have the inputs' dtype (float16) or float32"),
    ({"k_strides": [-1, 0, 0]}, "k strides must be >= 0"),
    ({"head_dim": 2 ** 31}, "head_dim must be in [0, 2^31)"),
])
def test_planner_rejects_what_the_kernels_do_not_take(changes, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        _C.plan_kv_cache_append(_append_problem(**changes))


@pytest.mark.emulator
@pytest.mark.parametrize("checks", ["bounds", "races"])
def test_kernels_under_checked_modes(checks):
    """AddressSanitizer (each buffer in an allocation of exactly its size) and ThreadSanitizer (one fiber per GPU
    thread) over both kernels: bfloat with float tables, GQA-like heads, odd head dims past a partial rotary_dim
    (a last element copied alone), pages crossed."""
    args = make_case("bf16-page8-odd-dims-fp32tables")
    before_k, before_v = args["k_cache"].clone(), args["v_cache"].clone()
    metal_kv_cache.kv_cache_append("emulator", *args.values(), checks=checks)
    check_append(args, before_k, before_v)
    x = torch.randn(2, 7, 3, 41).to(torch.bfloat16).transpose(1, 2)
    cos, sin = args["rotary_cos"], args["rotary_sin"]
    pos = torch.tensor([2, 0], dtype=torch.int32)
    out = metal_kv_cache.rotary_embedding("emulator", x, pos, cos, sin, True, False, checks=checks)
    at = (pos.long()[:, None, None] + torch.arange(7)).expand(2, 1, 7)
    assert_rule("out", out, rotate_same_dtype(x, at, cos, sin, True), rotate_fp64(x, at, cos, sin, True),
                torch.bfloat16)
