"""Plans of the attention forward and backward (csrc/attention/): resource limits for every head dim x dtype x GPU
family, grid coverage (rows, key splits, column slices), key splitting, temporaries, and clear errors for problems
the kernels do not take."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfa_torch import _C

FAMILIES = ["apple7", "apple8", "apple9", "apple10"]
MAX_E, MAX_EV = 576, 512  # the largest head dims the kernels take
DTYPES = ["float32", "float16", "bfloat16"]


def problem(**fields):
    p = _C.AttentionProblem()
    defaults = dict(batch=2, q_heads=4, kv_heads=2, q_len=37, kv_len=53, head_dim=64, value_dim=64)
    for name, value in {**defaults, **fields}.items():
        setattr(p, name, value)
    return p


def defines(launch):
    return dict(launch.defines)


def slices(launch, columns):
    """Column slices of an accumulator of `columns` (padded) columns the launch's threadgroups share."""
    return -(-int(columns) // int(defines(launch)["MFA_SLICE_DIM"]))


def covered_rows(plan, p):
    """(batch, head, row, split, slice) of every output row slice the forward launch computes, from its grid and
    defines: a threadgroup (query block, kv head, batch * splits + split) packs query heads of the GQA group into its
    rows, and gives each row group's column slices of O a SIMD-group each."""
    forward = plan.launches[0]
    block_q = int(defines(forward)["MFA_BLOCK_Q"])
    out_slices = slices(forward, defines(forward)["MFA_VALUE_DIM"])
    group = p.q_heads // p.kv_heads
    groups_x, heads, z = forward.threadgroups
    splits = z // (p.num_sequences or p.batch)
    rows = []
    assert forward.threads_per_threadgroup[0] == block_q // 8 * out_slices * 32
    for block, kv_head, zz, slice_ in itertools.product(range(groups_x), range(heads), range(z), range(out_slices)):
        for packed in range(block * block_q, (block + 1) * block_q):
            if packed < p.q_len * group:
                rows.append((zz // splits, kv_head * group + packed % group, packed // group, zz % splits, slice_))
    return rows, splits, out_slices


def head_dim_pairs():
    """Every head dim E the kernels take, each with Ev = E (clipped), 1, the largest Ev and the complement."""
    for E in range(1, MAX_E + 1):
        yield from ((E, Ev) for Ev in sorted({min(E, MAX_EV), 1, MAX_EV, max(1, MAX_EV + 1 - E)}))


def assert_within_gpu_limits(launch):
    threads = launch.threads_per_threadgroup
    assert threads[0] * threads[1] * threads[2] <= 1024
    assert threads[0] % 32 == 0, "whole SIMD-groups only"
    assert launch.threadgroup_memory <= 32 * 1024


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_head_dim_fits_the_gpu_limits(family, dtype):
    element = 4 if dtype == "float32" else 2  # tiles are staged in the input type
    for E, Ev in head_dim_pairs():
        plan = _C.plan_attention_forward(problem(head_dim=E, value_dim=Ev, dtype=dtype, family=family))
        for launch in plan.launches:
            assert_within_gpu_limits(launch)
        d = defines(plan.launches[0])
        head, value, out = int(d["MFA_HEAD_DIM"]), int(d["MFA_VALUE_DIM"]), int(d["MFA_SLICE_DIM"])
        assert head >= E and head % 8 == 0 and value >= Ev and value % 8 == 0
        assert out % 8 == 0 and out <= value
        assert d["MFA_T"] == {"float32": "float", "float16": "half", "bfloat16": "bfloat"}[dtype]
        block_q, block_k, k_chunks, v_rows = (int(d[n]) for n in ("MFA_BLOCK_Q", "MFA_BLOCK_K", "MFA_K_CHUNKS",
                                                                   "MFA_V_ROWS"))
        k_chunk = -(-head // (8 * k_chunks)) * 8  # whole tiles; the last chunk may hold fewer
        assert k_chunk * (k_chunks - 1) < head and block_k % v_rows == 0 and v_rows % 8 == 0
        out_slices = slices(plan.launches[0], value)
        assert block_k % (8 * out_slices) == 0, "each slice scores whole key tiles"
        tile = max(block_k * k_chunk, v_rows * out_slices * out) * element  # a K chunk, or V rows
        shared = block_q * (block_k + out_slices) * 4 if out_slices > 1 else 0  # P and the rows' maxima
        assert plan.launches[0].threadgroup_memory == tile + shared  # what the shader declares


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_head_dim_fits_the_gpu_limits_in_the_backward(family, dtype):
    element = 4 if dtype == "float32" else 2
    for E, Ev in head_dim_pairs():
        p = problem(head_dim=E, value_dim=Ev, dtype=dtype, family=family)
        plan = _C.plan_attention_backward(p, False)
        head, value = -(-E // 8) * 8, -(-Ev // 8) * 8
        for launch in plan.launches:
            assert_within_gpu_limits(launch)
            d = defines(launch)
            if launch.kernel == "attention_backward_dq":  # rows of q a threadgroup, a block of keys
                rows, block, kernel_slices = int(d["MFA_BLOCK_Q"]), int(d["MFA_BLOCK_K"]), slices(launch, head)
                chunks, row_bytes, grid_rows = (d["MFA_K_CHUNKS"], d["MFA_V_CHUNKS"]), 0, p.q_len * 2
            elif launch.kernel == "attention_backward_dkdv":  # keys a threadgroup, a block of queries and their stats
                rows, block, kernel_slices = int(d["MFA_BLOCK_KV"]), int(d["MFA_BLOCK_Q"]), int(d["MFA_SLICES"])
                chunks, row_bytes, grid_rows = (d["MFA_Q_CHUNKS"], d["MFA_DO_CHUNKS"]), 12, p.kv_len
            else:
                continue
            if kernel_slices > 1:  # a chunk of one operand pair's (K, V or Q, dO), and the block's scores in float
                assert block % (8 * kernel_slices) == 0, "each slice scores whole tiles of the block"
                chunk = max(-(-dim // (8 * int(n))) * 8 for dim, n in zip((head, value), chunks))
                staged = block * chunk * element + rows * block * 4
            else:  # both operands whole
                assert chunks == ("1", "1")
                staged = block * (head + value) * element
            assert launch.threadgroup_memory == staged + block * row_bytes  # what the shader declares
            assert launch.threadgroups[0] == -(-grid_rows // rows)
            assert launch.threads_per_threadgroup[0] == rows // 8 * kernel_slices * 32


@settings(max_examples=150, deadline=None)
@given(batch=st.integers(1, 3), kv_heads=st.integers(1, 3), group=st.sampled_from([1, 2, 3, 8, 16]),
       q_len=st.integers(1, 70), kv_len=st.integers(0, 3000), head_dim=st.integers(1, MAX_E),
       family=st.sampled_from(FAMILIES))
def test_the_grid_covers_every_row_exactly_once(batch, kv_heads, group, q_len, kv_len, head_dim, family):
    p = problem(batch=batch, q_heads=kv_heads * group, kv_heads=kv_heads, q_len=q_len, kv_len=kv_len,
                head_dim=head_dim, value_dim=min(head_dim, MAX_EV), family=family)
    plan = _C.plan_attention_forward(p)
    rows, splits, out_slices = covered_rows(plan, p)
    expected = itertools.product(range(batch), range(p.q_heads), range(q_len), range(splits), range(out_slices))
    assert sorted(rows) == sorted(expected)
    if splits > 1:  # the combine pass covers every (batch, head, row) once
        combine = plan.launches[1]
        assert combine.kernel == "attention_combine" and tuple(combine.threadgroups) == (q_len, p.q_heads, batch)
        partial = {t.name: t.numel for t in plan.temporaries}
        assert partial == {"partial_out": batch * p.q_heads * q_len * splits * p.value_dim,
                           "partial_stats": 2 * batch * p.q_heads * q_len * splits}
    else:
        assert len(plan.launches) == 1 and not plan.temporaries


def test_decoding_packs_the_gqa_group_and_splits_the_keys():
    """Regression row 3's shape: one query, 16 query heads per K/V head, 1024 keys."""
    p = problem(batch=1, q_heads=32, kv_heads=2, q_len=1, kv_len=1024, head_dim=128, value_dim=128, dtype="bfloat16")
    plan = _C.plan_attention_forward(p)
    forward = plan.launches[0]
    assert defines(forward)["MFA_BLOCK_Q"] == "16"  # the 16 heads of a group share one threadgroup
    assert defines(forward)["MFA_SPLIT_KV"] == "1" and forward.threadgroups[2] > 1
    assert [launch.kernel for launch in plan.launches] == ["attention_forward", "attention_combine"]


def test_large_problems_do_not_split():
    plan = _C.plan_attention_forward(problem(batch=8, q_heads=16, kv_heads=16, q_len=4096, kv_len=4096))
    assert len(plan.launches) == 1 and defines(plan.launches[0])["MFA_SPLIT_KV"] == "0"


def test_a_paged_cache_binds_its_table_and_splits_by_its_longest_sequence():
    """The grid and splits follow max_seqlen_k (the sequences' keys), not the page size; num_splits overrides them."""
    paged = dict(batch=3, q_heads=8, kv_heads=2, q_len=1, kv_len=16, paged=True, pages=400, max_pages=256,
                 max_seqlen_k=4000)
    plan = _C.plan_attention_forward(problem(**paged))
    forward = plan.launches[0]
    assert defines(forward)["MFA_PAGED_KV"] == "1" and defines(forward)["MFA_SPLIT_KV"] == "1"
    bound = {a.index: a.tensor for a in forward.arguments if a.tensor}
    assert (bound[21], bound[22], bound[6]) == ("block_table", "kv_spans", "q")  # no cu_seqlens_k with pages
    assert forward.threadgroups[2] % 3 == 0 and forward.threadgroups[2] > 3
    forced = _C.plan_attention_forward(problem(**paged, num_splits=5)).launches[0]
    assert forced.threadgroups[2] == 3 * 5
    one = _C.plan_attention_forward(problem(**paged, num_splits=1))
    assert len(one.launches) == 1 and one.launches[0].threadgroups[2] == 3
    with pytest.raises(ValueError, match="a paged K/V cache has no backward"):
        _C.plan_attention_backward(problem(**paged), False)
    unpaged = _C.plan_attention_forward(problem()).launches[0]
    assert defines(unpaged)["MFA_PAGED_KV"] == "0" and {a.index: a.tensor for a in unpaged.arguments}[21] == "q"


def test_the_tile_counter_is_a_debug_temporary():
    plan = _C.plan_attention_forward(problem(count_tiles=True))
    forward = plan.launches[0]
    assert defines(forward)["MFA_COUNT_TILES"] == "1"
    tiles = [t for t in plan.temporaries if t.name == "tile_count"]
    assert len(tiles) == 1 and tiles[0].numel == forward.threadgroups[0] * forward.threadgroups[1] * \
        forward.threadgroups[2]


def test_unused_buffers_are_bound_and_present_ones_by_name():
    plain = _C.plan_attention_forward(problem()).launches[0]
    assert {a.index: a.tensor for a in plain.arguments if a.tensor} == {
        0: "q", 1: "k", 2: "v", 3: "q", 4: "q", 5: "q", 6: "q", 7: "out", 8: "stats", 10: "q", 19: "q", 20: "q",
        21: "q", 22: "q"}
    assert [a.index for a in plain.arguments if not a.tensor] == [9]  # the params struct, as bytes
    full = _C.plan_attention_forward(problem(mask="bool", has_alibi=True, has_sinks=True)).launches[0]
    assert {a.index: a.tensor for a in full.arguments}[3] == "mask"
    assert {a.index: a.tensor for a in full.arguments}[4] == "alibi"
    assert {a.index: a.tensor for a in full.arguments}[19] == "sinks"
    assert dict(full.defines)["MFA_MASK_T"] == "uchar"
    blocks = _C.plan_attention_forward(problem(mask="blocks", mask_block_q=16, mask_block_k=48)).launches[0]
    assert {a.index: a.tensor for a in blocks.arguments}[3] == "mask"  # the block states
    assert {a.index: a.tensor for a in blocks.arguments}[20] == "mask_bits"
    assert dict(blocks.defines)["MFA_MASK_KIND"] == "3" and dict(blocks.defines)["MFA_MASK_T"] == "int"


def test_empty_problems_have_no_launches():
    for fields in ({"batch": 0}, {"q_heads": 0, "kv_heads": 0}, {"q_len": 0}):
        assert not _C.plan_attention_forward(problem(**fields)).launches


@pytest.mark.parametrize("fields, message", [
    ({"head_dim": 577}, "head_dim must be in \\[1, 576\\]"),
    ({"value_dim": 0}, "value_dim must be in \\[1, 512\\]"),
    ({"value_dim": 513}, "value_dim must be in \\[1, 512\\]"),
    ({"dtype": "float64"}, "q must be float32, float16 or bfloat16"),
    ({"mask": "int8"}, "mask must be float32, float16 or bfloat16"),
    ({"q_heads": 3}, "multiple of kv_heads"),
    ({"family": "apple6"}, "gpu family must be one of"),
    ({"q_len": 2 ** 31}, "q_len must be below 2\\^31"),
    ({"num_sequences": 2, "batch": 2}, "varlen problems must have batch 1"),
    ({"mask": "blocks"}, "mask_block_q and mask_block_k must be in"),
    ({"paged": True, "mask": "bool"}, "a paged K/V cache takes no mask"),
    ({"paged": True, "max_pages": 2 ** 31}, "pages and max_pages must be in"),
    ({"num_splits": -1}, "num_splits must be >= 0"),
])
def test_problems_the_kernels_do_not_take_are_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        _C.plan_attention_forward(problem(**fields))


def _params_bytes(plan):
    return [a.bytes for launch in plan.launches for a in launch.arguments if not a.tensor]


PLANNERS = [_C.plan_attention_forward, lambda p: _C.plan_attention_backward(p, False)]


@pytest.mark.parametrize("plan_of", PLANNERS, ids=["forward", "backward"])
def test_unset_input_strides_are_those_of_contiguous_tensors(plan_of):
    Hq, Hk, L, S, E = 4, 2, 37, 53, 64  # problem()'s sizes
    dense = problem(q_strides=[Hq * L * E, L * E, E, 1], k_strides=[Hk * S * E, S * E, E, 1],
                    v_strides=[Hk * S * E, S * E, E, 1])
    assert _params_bytes(plan_of(problem())) == _params_bytes(plan_of(dense))
    # a view of a packed (B, L, 3, Hq, E) tensor: the strides reach the kernels' params
    packed = problem(q_strides=[L * 3 * Hq * E, E, 3 * Hq * E, 1])
    assert _params_bytes(plan_of(packed)) != _params_bytes(plan_of(problem()))


@pytest.mark.parametrize("plan_of", PLANNERS, ids=["forward", "backward"])
@pytest.mark.parametrize("fields, message", [
    ({"q_strides": [9472, 2368, 64, 2]}, "q_strides .*the last \\(head dim\\) stride must be 1"),
    ({"k_strides": [-1, 3392, 64, 1]}, "k_strides .*strides must be >= 0"),
    ({"v_strides": [2 ** 61, 3392, 64, 1]}, "v_strides .*element offsets must stay below 2\\^61"),
    ({"q_strides": [2 ** 62, 2 ** 62, 64, 1]}, "q_strides .*element offsets must stay below 2\\^61"),  # overflows
])
def test_input_strides_the_kernels_cannot_read_are_clear_errors(plan_of, fields, message):
    with pytest.raises(ValueError, match=message):
        plan_of(problem(**fields))
