"""Launch plans of the Metal GEMM (csrc/gemm/): limits, the Stream-K schedule, vector accesses, temporaries, bindings,
validation.

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
# GemmParams of shaders/gemm_params.h: a_strides[3], b_strides[3] (int64), units_per_worker (uint64), then 13 uint32
# fields, padded to 8 bytes.
PARAMS = struct.Struct("<6qQ13I4x")
FIELDS = ("units_per_worker", "longer_workers", "workers", "batch", "m", "n", "k", "row_blocks", "col_blocks",
          "k_blocks", "has_bias", "accumulate", "copy_modes", "vector_c")
CONCURRENT = 128  # kGemmConcurrentThreadgroups
COPY_SCALAR, COPY_ROWS, COPY_COLUMNS = 0, 1, 2


def problem(m, n, k, *, batch=1, dtype="float32", family="apple9", bias=False, accumulate=False, a_strides=None,
            b_strides=None, aligned=True):
    p = _C.GemmProblem()
    p.dtype, p.family, p.batch, p.m, p.n, p.k = dtype, family, batch, m, n, k
    p.a_strides = a_strides or [m * k, k, 1]
    p.b_strides = b_strides or [k * n, n, 1]
    p.has_bias, p.accumulate = bias, accumulate
    p.a_aligned = p.b_aligned = p.c_aligned = p.bias_aligned = aligned
    return p


def params_of(launch):
    (raw,) = [a.bytes for a in launch.arguments if not a.tensor]
    assert len(raw) == PARAMS.size, "GemmParams layout changed: update PARAMS"
    values = PARAMS.unpack(raw)
    return dict(a_strides=values[0:3], b_strides=values[3:6], **dict(zip(FIELDS, values[6:])))


def defines(launch):
    return {name: int(value) if value.isdigit() else value for name, value in launch.defines}


def worker_ranges(params):
    """Each worker's units [start, end), as gemm.metal's worker_start computes them."""
    q, r, w = params["units_per_worker"], params["longer_workers"], params["workers"]
    start = [i * q + min(i, r) for i in range(w + 1)]
    return list(zip(start[:-1], start[1:]))


def check_stream_k(params):
    """A model of the kernels' schedule: every unit is computed once; a tile one worker covers whole is written by
    it, and every other tile is summed by exactly one gemm_reduce threadgroup from the slots its workers wrote.
    Returns whether any tile is shared."""
    kb = params["k_blocks"]
    tiles = params["batch"] * params["row_blocks"] * params["col_blocks"]
    ranges = worker_ranges(params)
    assert ranges[-1][1] == tiles * kb and all(end > start for start, end in ranges)  # no idle worker
    written, slots = Counter(), {}
    for w, (start, end) in enumerate(ranges):
        unit = start
        while unit < end:
            t, begin = divmod(unit, kb)
            stop = min(kb, begin + end - unit)
            if begin == 0 and stop == kb:
                written[t] += 1
            else:
                slots.setdefault(t, []).append((w, 0 if unit == start else 1))
            unit += stop - begin
    reduced = Counter()
    for w in range(1, params["workers"]):  # gemm_reduce's threadgroup w - 1
        start, previous = ranges[w][0], ranges[w - 1][0]
        t = start // kb
        if start != t * kb and previous <= t * kb:
            owners = [v for v, (s, e) in enumerate(ranges) if s < (t + 1) * kb and e > t * kb]
            assert [(v, 0 if ranges[v][0] // kb == t else 1) for v in owners] == slots[t]  # in worker order
            reduced[t] += 1
    assert set(written) | set(reduced) == set(range(tiles)) and not set(written) & set(reduced)
    assert set(reduced) == set(slots)
    assert all(n == 1 for n in written.values()) and all(n == 1 for n in reduced.values())
    return bool(slots)


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
    assert d["MFA_BFLOAT_AS_FLOAT"] == int(p.dtype == "bfloat16" and p.family in ("apple7", "apple8"))
    # SIMD-group sub-tiles of a 2 x 2 grid are whole 8x8 row tiles and 16-column pairs; K blocks whole 16-deep chunks.
    assert bm % 16 == 0 and bn % 32 == 0 and bk % 16 == 0
    assert tuple(gemm.threads_per_threadgroup) == (128, 1, 1)
    element = 4 if p.dtype == "float32" else 2
    assert gemm.threadgroup_memory == (bm + bn) * bk * element <= 32 * 1024

    params = params_of(gemm)
    assert (params["batch"], params["m"], params["n"], params["k"]) == (p.batch, p.m, p.n, p.k)
    assert list(params["a_strides"]) == list(p.a_strides) and list(params["b_strides"]) == list(p.b_strides)
    assert params["has_bias"] == p.has_bias and params["accumulate"] == p.accumulate
    assert (params["row_blocks"], params["col_blocks"]) == (-(-p.m // bm), -(-p.n // bn))
    assert params["k_blocks"] == max(1, -(-p.k // bk))
    workers = params["workers"]
    tiles = p.batch * params["row_blocks"] * params["col_blocks"]
    assert tuple(gemm.threadgroups) == (workers, 1, 1) and tiles < 2 ** 32
    # A worker per tile, unless the tiles leave the GPU partly idle: fewer than it runs at once, or a few waves with
    # a part-filled last one.
    if tiles % CONCURRENT == 0 or tiles >= 4 * CONCURRENT:
        assert workers == tiles
    elif tiles > CONCURRENT:
        assert workers == CONCURRENT
    else:
        assert workers == max(tiles, min(CONCURRENT, tiles * params["k_blocks"] // 8))
    if workers <= 4096:  # the schedule model walks every worker
        shared = check_stream_k(params)
        assert shared == (len(plan.launches) == 2)

    bound = {a.index: a.tensor for a in gemm.arguments if a.tensor}
    temporaries = {t.name: t for t in plan.temporaries}
    assert bound[3] == "c"
    if len(plan.launches) == 1:
        assert not temporaries and bound[5] == "c"
    else:
        partial = temporaries.pop("partial")
        assert partial.dtype == "float32" and partial.numel == workers * 2 * bm * bn
        assert not temporaries and bound[5] == "partial"
        reduce = plan.launches[1]
        assert reduce.kernel == "gemm_reduce" and reduce.shader == gemm.shader
        assert reduce.defines == gemm.defines  # one compiled library for both launches
        assert reduce.threadgroup_memory == 0 and params_of(reduce) == params
        assert tuple(reduce.threadgroups) == (workers - 1, 1, 1)
        assert tuple(reduce.threads_per_threadgroup) == (256, 1, 1)
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


@pytest.mark.parametrize("family, dtype, from_device", [
    ("apple7", "float32", (1, 0)), ("apple8", "float32", (1, 0)),
    ("apple7", "float16", (0, 0)), ("apple8", "bfloat16", (0, 0)),
    ("apple9", "float32", (1, 1)), ("apple10", "float16", (1, 1)), ("apple9", "bfloat16", (1, 1)),
])
def test_block_table(family, dtype, from_device):
    """The per-family table the README documents: 64 x 64 x 32 blocks everywhere; M1/M2 stage the operands (but
    float32's A), M3 and later read both straight from device memory."""
    d = defines(_C.plan_gemm(problem(100, 100, 100, dtype=dtype, family=family)).launches[0])
    assert (d["MFA_BLOCK_M"], d["MFA_BLOCK_N"], d["MFA_BLOCK_K"]) == (64, 64, 32)
    assert (d["MFA_A_FROM_DEVICE"], d["MFA_B_FROM_DEVICE"]) == from_device


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_vector_accesses_follow_strides_and_offsets(dtype):
    """4-element and 16-byte accesses only where every row (or column) they touch begins on their alignment."""
    def modes(a_strides, b_strides, **kw):
        gemm = check_plan(problem(64, 64, 64, dtype=dtype, a_strides=a_strides, b_strides=b_strides, **kw)).launches[0]
        params, d = params_of(gemm), defines(gemm)
        return (params["copy_modes"] & 3, params["copy_modes"] >> 2, d["MFA_A_FROM_DEVICE"], d["MFA_B_FROM_DEVICE"],
                params["vector_c"])
    rows_of_16_bytes = COPY_ROWS if dtype == "float32" else COPY_SCALAR  # 68 elements: 16-byte rows only as float
    assert modes([0, 64, 1], [0, 64, 1]) == (COPY_ROWS, COPY_ROWS, 1, 1, 1)
    assert modes([0, 1, 64], [0, 1, 64]) == (COPY_COLUMNS, COPY_COLUMNS, 0, 0, 1)  # transposed operands
    assert modes([0, 64, 1], [0, 64, 1], aligned=False) == (COPY_SCALAR, COPY_SCALAR, 0, 0, 0)
    assert modes([0, 68, 1], [0, 128, 2]) == (rows_of_16_bytes, COPY_SCALAR, 1, 0, 1)  # b's columns 2 apart
    assert modes([0, 66, 1], [0, 1, 66])[:4] == (COPY_SCALAR, COPY_SCALAR, 0, 0)  # rows off 4 elements
    assert modes([0, 64, 1], [64 * 64 + 2, 64, 1], batch=2)[1::2] == (COPY_SCALAR, 0)  # b's batch stride off
    assert params_of(_C.plan_gemm(problem(64, 62, 64, dtype=dtype)).launches[0])["vector_c"] == 0  # rows of c
    p = problem(64, 64, 64, dtype=dtype, bias=True)
    p.bias_aligned = False
    assert params_of(_C.plan_gemm(p).launches[0])["vector_c"] == 0


def test_stream_k_only_where_tiles_leave_the_gpu_idle():
    """Stream-K for few tiles with long K and for part-filled waves; a worker per tile otherwise."""
    assert params_of(check_plan(problem(8, 8, 8192)).launches[0])["workers"] == 32  # 256 K blocks, 8 each
    assert params_of(check_plan(problem(8, 8, 64)).launches[0])["workers"] == 1  # short K: nothing to spread
    assert params_of(check_plan(problem(1024, 1024, 1024)).launches[0])["workers"] == 256  # two full waves
    assert params_of(check_plan(problem(4096, 4096, 1024)).launches[0])["workers"] == 4096
    wave_and_a_bit = check_plan(problem(64 * 129, 64, 1024))  # 129 tiles over 128 workers
    assert params_of(wave_and_a_bit.launches[0])["workers"] == CONCURRENT and len(wave_and_a_bit.launches) == 2
    assert params_of(check_plan(problem(64 * 600, 64, 1024)).launches[0])["workers"] == 600  # many waves


def test_too_many_tiles_is_refused():
    with pytest.raises(ValueError, match="too many tiles"):
        _C.plan_gemm(problem(2 ** 31 - 1, 2 ** 31 - 1, 1))


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
