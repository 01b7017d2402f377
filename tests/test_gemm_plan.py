"""Launch plans of the Metal GEMM (csrc/gemm/): limits, grid coverage, split-K, temporaries, bindings, validation.

Plans are plain data, so these run everywhere; the kernels themselves are tested in test_gemm_emulator.py.
"""
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfa_torch import _C

DTYPES = ["float32", "float16", "bfloat16"]
FAMILIES = ["apple7", "apple8", "apple9", "apple10"]
# GemmParams of shaders/gemm_params.h: a_strides[3], b_strides[3] (int64), then batch, m, n, k, has_bias, accumulate,
# num_splits, blocks_per_split (uint32).
PARAMS = struct.Struct("<6q8I")
FIELDS = ("batch", "m", "n", "k", "has_bias", "accumulate", "num_splits", "blocks_per_split")


def problem(m, n, k, *, batch=1, dtype="float32", family="apple9", bias=False, accumulate=False, a_strides=None,
            b_strides=None):
    p = _C.GemmProblem()
    p.dtype, p.family, p.batch, p.m, p.n, p.k = dtype, family, batch, m, n, k
    p.a_strides = a_strides or [m * k, k, 1]
    p.b_strides = b_strides or [k * n, n, 1]
    p.has_bias, p.accumulate = bias, accumulate
    return p


def params_of(launch):
    (raw,) = [a.bytes for a in launch.arguments if not a.tensor]
    assert len(raw) == PARAMS.size, "GemmParams layout changed: update PARAMS"
    values = PARAMS.unpack(raw)
    return dict(a_strides=values[0:3], b_strides=values[3:6], **dict(zip(FIELDS, values[6:])))


def defines(launch):
    return {name: int(value) if value.isdigit() else value for name, value in launch.defines}


def check_plan(p):
    """Every invariant of a plan for problem p; returns the plan."""
    plan = _C.plan_gemm(p)
    if p.batch * p.m * p.n == 0:
        assert not plan.launches and not plan.temporaries
        return plan
    gemm = plan.launches[0]
    assert gemm.shader == "gemm.metal" and gemm.kernel == "gemm"
    d = defines(gemm)
    bm, bn, bk = d["MFA_BLOCK_M"], d["MFA_BLOCK_N"], d["MFA_BLOCK_K"]
    assert d["MFA_T"] == {"float32": "float", "float16": "half", "bfloat16": "bfloat"}[p.dtype]
    # SIMD-group sub-tiles of a 2 x 2 grid are whole 8x8 tiles; K steps are whole tiles.
    assert bm % 16 == 0 and bn % 16 == 0 and bk % 8 == 0
    threads = gemm.threads_per_threadgroup
    assert tuple(threads) == (128, 1, 1)
    assert gemm.threadgroup_memory == (bm + bn) * bk * 4 <= 32 * 1024

    params = params_of(gemm)
    assert (params["batch"], params["m"], params["n"], params["k"]) == (p.batch, p.m, p.n, p.k)
    assert list(params["a_strides"]) == list(p.a_strides) and list(params["b_strides"]) == list(p.b_strides)
    assert params["has_bias"] == p.has_bias and params["accumulate"] == p.accumulate
    splits, per_split = params["num_splits"], params["blocks_per_split"]
    k_blocks = -(-p.k // bk)

    # The grid covers every (batch, row block, column block) tile once per split, and the splits of a tile cover its
    # K blocks exactly once, none empty.
    gx, gy, gz = gemm.threadgroups
    assert (gx, gy) == (-(-p.n // bn), -(-p.m // bm)) and gz == p.batch * splits
    assert gx < 2 ** 32 and gy < 2 ** 32 and gz < 2 ** 32
    ranges = [range(s * per_split, min(k_blocks, (s + 1) * per_split)) for s in range(splits)]
    assert all(len(r) > 0 for r in ranges) or k_blocks == 0 and splits == 1
    assert Counter(b for r in ranges for b in r) == Counter(range(k_blocks))
    assert d["MFA_SPLIT_K"] == int(splits > 1)

    bound = {a.index: a.tensor for a in gemm.arguments if a.tensor}
    temporaries = {t.name: t for t in plan.temporaries}
    if splits == 1:
        assert len(plan.launches) == 1 and not temporaries
        assert bound[3] == "c"
    else:
        partial = temporaries.pop("partial")
        assert partial.dtype == "float32" and partial.numel == splits * p.batch * p.m * p.n
        assert not temporaries
        assert bound[3] == "partial"
        reduce = plan.launches[1]
        assert reduce.kernel == "gemm_reduce" and reduce.shader == gemm.shader
        assert reduce.defines == gemm.defines  # one compiled library for both launches
        assert reduce.threadgroup_memory == 0 and params_of(reduce) == params
        per_group = reduce.threads_per_threadgroup[0]
        assert tuple(reduce.threads_per_threadgroup) == (per_group, 1, 1) and per_group <= 1024
        outputs = p.batch * p.m * p.n
        assert tuple(reduce.threadgroups[1:]) == (1, 1)
        assert (reduce.threadgroups[0] - 1) * per_group < outputs <= reduce.threadgroups[0] * per_group
        assert outputs < 2 ** 32  # the reduction indexes elements with 32 bits
        assert {a.index: a.tensor for a in reduce.arguments if a.tensor} == \
            {5: "partial", 2: "bias" if p.has_bias else "c", 3: "c"}
    # Unread buffers are bound to c (never to a missing bias, or to an empty a or b).
    assert bound[0] == ("a" if p.k else "c") and bound[1] == ("b" if p.k else "c")
    assert bound[2] == ("bias" if p.has_bias else "c")
    return plan


sizes = st.one_of(st.integers(0, 9), st.integers(10, 300), st.sampled_from([1, 7, 13, 61, 127, 4099]))


@settings(max_examples=300, deadline=None)
@given(dtype=st.sampled_from(DTYPES), family=st.sampled_from(FAMILIES), batch=st.integers(0, 5), m=sizes, n=sizes,
       k=st.one_of(sizes, st.integers(300, 20000)), bias=st.booleans(), accumulate=st.booleans())
def test_plan_invariants(dtype, family, batch, m, n, k, bias, accumulate):
    check_plan(problem(m, n, k, batch=batch, dtype=dtype, family=family, bias=bias, accumulate=accumulate))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mnk", [(1, 1, 1), (61, 7, 13), (4096, 4096, 4096), (1, 4096, 4096), (8, 8, 100000)])
def test_plan_every_dtype_and_family(dtype, family, mnk):
    check_plan(problem(*mnk, batch=2, dtype=dtype, family=family, bias=True))


@pytest.mark.parametrize("family, dtype, blocks", [
    ("apple7", "float32", (48, 48, 24)), ("apple8", "float32", (48, 48, 24)),
    ("apple7", "float16", (48, 48, 32)), ("apple8", "bfloat16", (48, 48, 32)),
    ("apple9", "float32", (32, 32, 32)), ("apple10", "float16", (32, 32, 32)),
])
def test_block_table(family, dtype, blocks):
    """The per-family blocks the README documents (MFA's M1/M2 tables; 32 x 32 output blocks on M3 and later)."""
    d = defines(_C.plan_gemm(problem(100, 100, 100, dtype=dtype, family=family)).launches[0])
    assert (d["MFA_BLOCK_M"], d["MFA_BLOCK_N"], d["MFA_BLOCK_K"]) == blocks


def test_split_k_only_for_outputs_too_small_to_fill_the_gpu():
    skinny = check_plan(problem(8, 8, 8192))
    assert params_of(skinny.launches[0])["num_splits"] > 1
    assert params_of(check_plan(problem(2048, 2048, 8192)).launches[0])["num_splits"] == 1
    assert params_of(check_plan(problem(8, 8, 64)).launches[0])["num_splits"] == 1  # short K: nothing to split


def test_transposed_and_broadcast_strides_reach_the_kernel_as_64_bit():
    """Strides are carried as given (no copies); large ones survive (64-bit offsets in the kernel)."""
    big = 3 * 2 ** 31
    plan = check_plan(problem(5, 6, 7, batch=3, a_strides=[0, 1, 5], b_strides=[big, 1, big + 7]))
    params = params_of(plan.launches[0])
    assert params["a_strides"] == (0, 1, 5) and params["b_strides"] == (big, 1, big + 7)


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "float64", "dtype must be float32, float16 or bfloat16"),
    ("family", "apple6", "gpu family must be one of"),
    ("m", -1, "m must be in"),
    ("k", 2 ** 31, "k must be in"),
    ("batch", -2, "batch must be in"),
    ("a_strides", [1, -1, 1], "a_strides must be >= 0"),
    ("b_strides", [0, 1, -3], "b_strides must be >= 0"),
])
def test_invalid_problems_name_the_argument(field, value, message):
    p = problem(4, 4, 4)
    setattr(p, field, value)
    with pytest.raises(ValueError, match=message):
        _C.plan_gemm(p)
