"""The shader variants the planners emit: one compiled library per (shader, kernel, defines), collected from real
launch plans over a grid of problems and every GPU family, so that checks over "every variant" (the strict front
end, the expanded-source tests) follow the planners instead of a hand-written list.

The grid is a covering, not a cross product: every dtype against every mask kind, split and unsplit, with and
without tile counting and mask gradients; every combination of score features; sinks; every rounded head dim; the largest head dims; and
query/key lengths short enough to shrink the blocks below their table sizes. A test
(tests/emulator/test_strict_front_end.py) checks that it reaches every define value and block-table row a much
wider sweep of the planners reaches.
"""
from __future__ import annotations

import dataclasses
import functools

from .. import _C
from . import lane_layout_self_test

GPU_FAMILIES = ("apple7", "apple8", "apple9", "apple10")
DTYPES = ("float32", "float16", "bfloat16")
MASKS = ("none", "bool") + DTYPES + ("blocks",)
SOFTCAP, ALIBI, DROPOUT = 1, 2, 4  # the score features (shaders/attention_params.h, MFA_SCORE_FEATURES)
SCORE_FEATURES = range(8)  # every combination
HEAD_DIM_STEP = 8  # the planners round head dims up to a multiple of 8
MAX_HEAD_DIM, MAX_VALUE_DIM = 576, 512  # shaders/attention_params.h


@dataclasses.dataclass(frozen=True, order=True)
class Variant:
    shader: str
    kernel: str
    defines: tuple  # ((name, value), ...) in the planner's order

    @property
    def define_dict(self) -> dict:
        return dict(self.defines)


def attention_problem(family, dtype="float16", mask="none", head_dim=64, value_dim=64, q_len=64, kv_len=64,
                      q_heads=8, kv_heads=2, count_tiles=False, score_features=0, sinks=False, paged=False):
    """A problem of one batch; score_features: a sum of SOFTCAP, ALIBI and DROPOUT switches those features on;
    mask "blocks": a FlexAttention block mask of 16 x 16 blocks shared by the heads; paged: keys in a paged cache
    of 16-row pages (forward only)."""
    p = _C.AttentionProblem()
    p.family, p.dtype, p.mask, p.count_tiles = family, dtype, mask, count_tiles
    p.batch, p.q_heads, p.kv_heads, p.q_len, p.kv_len = 1, q_heads, kv_heads, q_len, kv_len
    p.head_dim, p.value_dim = head_dim, value_dim
    if mask == "blocks":
        p.mask_block_q = p.mask_block_k = 16
        p.mask_strides = [0, 0, -(-kv_len // 16), 1]
    elif mask != "none":
        p.mask_strides = [0, 0, kv_len, 1]
    if score_features & SOFTCAP:
        p.softcap = 30.0
    if score_features & ALIBI:
        p.has_alibi = True
    if score_features & DROPOUT:
        p.dropout_p = 0.25
    p.has_sinks = sinks
    if paged:
        p.paged, p.kv_len, p.max_seqlen_k = True, 16, kv_len
        p.max_pages = p.pages = -(-kv_len // 16)
    return p


def gemm_problem(family, dtype, m, n, k, has_bias=True, aligned=True):
    p = _C.GemmProblem()
    p.family, p.dtype, p.batch, p.m, p.n, p.k, p.has_bias = family, dtype, 1, m, n, k, has_bias
    p.a_strides, p.b_strides = [0, k, 1], [0, n, 1]
    p.a_aligned = p.b_aligned = p.c_aligned = p.bias_aligned = aligned
    return p


def attention_plans(problem):
    """The forward plan and every backward plan (with a mask gradient when the mask is floating) of one problem."""
    yield _C.plan_attention_forward(problem)
    if problem.paged:  # inference only: no backward
        return
    yield _C.plan_attention_backward(problem, False)
    if problem.mask in DTYPES:  # a floating mask
        yield _C.plan_attention_backward(problem, True)


def _attention_grid(family):
    decode = dict(q_len=1, kv_len=4096)  # few threadgroups, long keys: split-KV
    for dtype in DTYPES:
        for mask in MASKS:
            yield attention_problem(family, dtype, mask, **decode, count_tiles=True)
            yield attention_problem(family, dtype, mask, value_dim=48)
    for features in SCORE_FEATURES:
        yield attention_problem(family, score_features=features)
    for dtype in DTYPES:  # sinks, in the forward and in the split-KV combine
        yield attention_problem(family, dtype, sinks=True)
        yield attention_problem(family, dtype, **decode, sinks=True)
    for dtype in DTYPES:  # paged K/V caches: decoding (split keys) and prefill
        yield attention_problem(family, dtype, **decode, paged=True)
        yield attention_problem(family, dtype, paged=True)
    for dim in range(HEAD_DIM_STEP, MAX_HEAD_DIM + 1, HEAD_DIM_STEP):
        yield attention_problem(family, head_dim=dim, value_dim=min(dim, MAX_VALUE_DIM))
    # operands streamed, dK/dV split and accumulators sliced where registers run short, and dP reading device memory
    # where float tiles pass the threadgroup memory, per tile type
    for dtype in DTYPES:
        for dims in ((128, 128), (256, 256), (8, 256), (256, 8), (MAX_HEAD_DIM, MAX_VALUE_DIM), (512, 512),
                     (8, MAX_VALUE_DIM), (MAX_HEAD_DIM, 8)):
            yield attention_problem(family, dtype, head_dim=dims[0], value_dim=dims[1])
    # float dK/dV in two slices (32 keys): Q in 7 chunks of 80 columns beside the 8 KiB of scores
    yield attention_problem(family, "float32", head_dim=512, value_dim=8)
    for dtype in DTYPES:  # O sliced: K staged in 1 to 9 chunks of its head dim
        for head_dim in range(64, MAX_HEAD_DIM + 1, 64):
            yield attention_problem(family, dtype, head_dim=head_dim, value_dim=MAX_VALUE_DIM)
        for value_dim in range(64, MAX_VALUE_DIM, 64):  # dQ sliced: V staged in 1 to 8 chunks of its head dim
            yield attention_problem(family, dtype, head_dim=MAX_HEAD_DIM, value_dim=value_dim)
    for dtype in ("float16", "float32"):  # float inputs stage fewer keys per block
        for q_len in (1, 9, 17, 25):  # packed rows below the table's block_q (8-row steps)
            for kv_len in (1, 17, 25):  # keys below the table's dK/dV block (8-key steps, at least 16)
                yield attention_problem(family, dtype, q_len=q_len, kv_len=kv_len, q_heads=1, kv_heads=1)
    for q_len in (1, 9, 17, 25):  # a block mask's key blocks (32 keys for its 16-key blocks) under short queries
        yield attention_problem(family, "float16", "blocks", q_len=q_len, q_heads=1, kv_heads=1)


def _gemm_grid(family):
    for dtype in DTYPES:
        yield gemm_problem(family, dtype, 64, 64, 64)  # one tile: operands from device memory where the table says
        yield gemm_problem(family, dtype, 64, 64, 64, aligned=False)  # every operand staged
        yield gemm_problem(family, dtype, 8, 8, 4096)  # few output tiles, long K: Stream-K


def kv_cache_plans(dtype, table_dtype):
    """A KV-cache append (paged, GQA-like) and a query rotary embedding with tables in `table_dtype` ("" for an append
    without rotary); the kernels' variants are the same for every GPU family."""
    tables = _C.RotaryTables()
    if table_dtype:
        tables.dtype, tables.rotary_dim, tables.length = table_dtype, 32, 128
        tables.cos_strides = tables.sin_strides = [16, 1]
    append = _C.KvCacheAppendProblem()
    append.dtype, append.batch, append.kv_heads, append.new_len = dtype, 2, 2, 3
    append.head_dim = append.value_dim = 64
    append.pages, append.page_size, append.max_pages = 8, 16, 4
    append.k_cache_strides = append.v_cache_strides = [16 * 2 * 64, 64, 2 * 64]
    append.k_strides = append.v_strides = [2 * 3 * 64, 3 * 64, 64]
    append.block_table_strides, append.rotary = [4, 1], tables
    yield _C.plan_kv_cache_append(append)
    if table_dtype:
        rotary = _C.RotaryEmbeddingProblem()
        rotary.dtype, rotary.batch, rotary.heads, rotary.seq_len, rotary.head_dim = dtype, 2, 4, 3, 64
        rotary.x_strides, rotary.rotary = [4 * 3 * 64, 3 * 64, 64], tables
        yield _C.plan_rotary_embedding(rotary)


def _plans():
    for family in GPU_FAMILIES:
        for problem in _attention_grid(family):
            yield from attention_plans(problem)
        for problem in _gemm_grid(family):
            yield _C.plan_gemm(problem)
    for dtype in DTYPES:  # tables in the inputs' dtype or float32, and none
        for table_dtype in dict.fromkeys((dtype, "float32", "")):
            yield from kv_cache_plans(dtype, table_dtype)
    yield lane_layout_self_test.plan()  # the doctor's fixed plan (no planner, one variant)


def variants_of(plans) -> list[Variant]:
    """The distinct variants the launches of some plans compile, sorted."""
    return sorted({Variant(launch.shader, launch.kernel, tuple(tuple(d) for d in launch.defines))
                   for plan in plans for launch in plan.launches})


@functools.lru_cache(maxsize=None)
def _planned_plans() -> tuple:
    return tuple(_plans())


def planned_launches() -> list:
    """Every launch of every plan over the grid above (the same variant may appear in many)."""
    return [launch for plan in _planned_plans() for launch in plan.launches]


@functools.lru_cache(maxsize=None)
def _planned() -> tuple:
    return tuple(variants_of(_planned_plans()))


def planned_variants() -> list[Variant]:
    """Every distinct (shader, kernel, defines) the planners emit over the grid above."""
    return list(_planned())
