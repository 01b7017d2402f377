"""The work targets the Metal kernels are built to (issue "Kernels built for speed"), asserted on the emulator's exact
counters (emulator.profile()) so that a later change cannot silently move a kernel away from them. Attention: 16-bit
inputs (fp16 and bf16), E = Ev = 64 and 128, L = S = 256, heads few enough that the planners do not split the keys,
planned for the Apple7 and Apple9 tables. GEMM: below."""
import pytest
import torch

from kernel_routes import with_dtypes
from mfa_torch.emulator import profile
from mfa_torch.metal import attention as metal_attention
from mfa_torch.metal import executors
from mfa_torch.metal import gemm as metal_gemm

pytestmark = pytest.mark.emulator
ROUTE = "emulator"
B, H, L = 1, 2, 256
# Each dtype on both tables and at both head dims; MFA_TORCH_FULL_MATRIX=1 runs every combination.
CASES = [pytest.param(dtype, dim, family, id=f"{str(dtype)[6:]}-D{dim}-{family}")
         for (dim, family), dtype in with_dtypes([(64, "apple7"), (128, "apple7"), (128, "apple9"), (64, "apple9")],
                                                 (torch.float16, torch.bfloat16))]


def _inputs(dtype, dim):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, dim, generator=gen).to(dtype) for _ in range(3))
    return q, k, v, (None, None, None, None, L, L, dim ** -0.5, -1, -1, False, 0.0, 0.0, None)


@pytest.mark.parametrize("dtype, dim, family", CASES)
def test_forward_work_targets(dtype, dim, family):
    q, k, v, args = _inputs(dtype, dim)
    with profile() as prof:
        metal_attention.forward(ROUTE, q, k, v, *args, family=family)
    (launch,) = prof.launches  # one launch: the keys were not split
    threadgroups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    assert launch["threadgroup_bytes"] <= 160 * launch["mma"]  # MFA's level
    assert launch["device_bytes"] >= 8 * launch["device_accesses"]  # vector loads, not scalar
    assert launch["barriers"] <= 2 * threadgroups * (L // 32)  # at most 2 per 32 keys per threadgroup
    assert launch["transcendentals"] <= 1.1 * B * H * L * L  # no mask, ALiBi, softcap, dropout or window
    assert not launch["spills"]


@pytest.mark.parametrize("dtype, dim, family", CASES)
def test_backward_work_targets(dtype, dim, family):
    q, k, v, args = _inputs(dtype, dim)
    out, stats = metal_attention.forward(ROUTE, q, k, v, *args, family=family)
    with profile() as prof:
        metal_attention.backward(ROUTE, torch.randn_like(out), q, k, v, out, stats, *args, False, family=family)
    kernels = [launch for launch in prof.launches if launch["kernel"] in ("attention_backward_dq",
                                                                          "attention_backward_dkdv")]
    assert len(kernels) == 2
    total = {key: sum(launch[key] for launch in kernels)
             for key in ("threadgroup_bytes", "mma", "device_bytes", "device_accesses", "transcendentals")}
    assert total["threadgroup_bytes"] <= 200 * total["mma"]
    assert total["device_bytes"] >= 8 * total["device_accesses"]
    assert total["transcendentals"] <= 2.1 * B * H * L * L  # P recomputed once per kernel


# Large head dims: O in two column slices, one SIMD-group each, each multiplying half of the head dim for every key
# and sharing each 64-key block's P (shaders/attention_forward.metal).
SLICED_L = 128  # two key blocks


@pytest.mark.parametrize("E, Ev", [(128, 512), (512, 512), (576, 512)])  # Q held, streamed
def test_sliced_forward_computes_each_product_and_exp_once(E, Ev):
    """Counts known by hand: every product of Q K^T and P V exactly once (no slice recomputes the scores), one exp per
    score, and per row, slice and lane of its row (4) one rescaling exp for every key block after the first and one
    division (1 / sum); each threadgroup reads its head's K and V from device memory once, and each element of Q once
    (held) or once per key block (streamed), by the one slice that multiplies its column."""
    slices = 2
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, H, SLICED_L, E, generator=gen).half() for _ in range(2))
    v = torch.randn(B, H, SLICED_L, Ev, generator=gen).half()
    args = (None, None, None, None, SLICED_L, SLICED_L, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
    with profile() as prof:
        metal_attention.forward(ROUTE, q, k, v, *args, family="apple9")
    (launch,) = prof.launches
    defines = launch["defines"]
    assert -(-Ev // int(defines["MFA_SLICE_DIM"])) == slices and defines["MFA_BLOCK_K"] == "64"
    scores, rows, blocks = B * H * SLICED_L * SLICED_L, B * H * SLICED_L, SLICED_L // 64
    assert launch["mma"] == scores // 64 * (E + Ev) // 8
    assert launch["transcendentals"] == scores + rows * slices * 4 * blocks
    assert launch["divisions"] == rows * slices * 4
    threadgroups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    kv_bytes = threadgroups * SLICED_L * (E + Ev) * 2  # each threadgroup reads its head's K and V once
    q_reads = 1 if defines["MFA_STREAM_Q"] == "0" else blocks
    assert launch["device_bytes"] == kv_bytes + q.numel() * 2 * q_reads + rows * (Ev * 2 + 8)  # + out, stats
    assert not launch["spills"]


def _sliced_backward_launch(E, Ev, kernel):
    """The counters of one backward kernel's launch, fp16 at B = 1, H = 2, L = S = SLICED_L on Apple9's table."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, H, SLICED_L, E, generator=gen).half() for _ in range(2))
    v = torch.randn(B, H, SLICED_L, Ev, generator=gen).half()
    args = (None, None, None, None, SLICED_L, SLICED_L, E ** -0.5, -1, -1, False, 0.0, 0.0, None)
    out, stats = metal_attention.forward(ROUTE, q, k, v, *args, family="apple9")
    with profile() as prof:
        metal_attention.backward(ROUTE, torch.randn_like(out), q, k, v, out, stats, *args, False, family="apple9")
    (launch,) = [launch for launch in prof.launches if launch["kernel"] == kernel]
    return launch


@pytest.mark.parametrize("E, Ev", [(512, 512), (576, 512)])
def test_sliced_dq_computes_each_product_and_exp_once(E, Ev):
    """Counts known by hand for dQ in 2 column slices sharing each 64-key block's dS: every product of S = Q K^T,
    dP = dO V^T and dQ = dS K exactly once, one exp per score and one division (1 / sum) per thread; K and V read
    from device memory once per threadgroup but K's chunks before the last, which dQ stages again; each element of Q
    and dO streamed once per block, by the slice that multiplies its column. Threadgroup memory: each staged element
    written once, one staged tile read per product (K's and V's chunks written whole), each score's partial dP and S
    stored by one slice and loaded by the other, dS stored once and loaded by each slice for each K chunk holding its
    columns."""
    launch = _sliced_backward_launch(E, Ev, "attention_backward_dq")
    d = launch["defines"]
    slice_dim, k_chunks, v_chunks = int(d["MFA_SLICE_DIM"]), int(d["MFA_K_CHUNKS"]), int(d["MFA_V_CHUNKS"])
    assert -(-E // slice_dim) == 2 and d["MFA_BLOCK_K"] == "64" and d["MFA_STREAM_Q"] == d["MFA_STREAM_DO"] == "1"
    scores, rows, blocks = B * H * SLICED_L * SLICED_L, B * H * SLICED_L, SLICED_L // 64
    threads = rows * 2 * 4  # a row's 4 lanes in each of its 2 slices' SIMD-groups
    assert launch["mma"] == scores // 64 * (2 * E + Ev) // 8
    assert launch["transcendentals"] == scores + threads and launch["divisions"] == threads
    threadgroups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    k_chunk = -(-E // (8 * k_chunks)) * 8
    staged_columns = E + k_chunk * (k_chunks - 1) + Ev  # K, K's chunks staged again for dQ, V
    rows_read = rows * (E + Ev) * 2 * blocks  # Q and dO, once for each block
    dq_and_stats = rows * E * 2 + threads * 12  # dQ written; each thread reads its row's stats and delta
    assert launch["device_bytes"] == threadgroups * SLICED_L * staged_columns * 2 + rows_read + dq_and_stats
    chunks_of_slice = [sum(c * k_chunk < (s + 1) * slice_dim and s * slice_dim < (c + 1) * k_chunk
                           for c in range(k_chunks)) for s in range(2)]
    ds_loads = rows // 8 * blocks * sum(chunks_of_slice) * 8  # per row group, block, slice and chunk: 8 tiles
    v_chunk = -(-Ev // (8 * v_chunks)) * 8
    written_columns = k_chunk * (2 * k_chunks - 1) + v_chunk * v_chunks  # whole chunks: a short last one zero-filled
    assert launch["threadgroup_bytes"] == (threadgroups * SLICED_L * written_columns * 2 + launch["mma"] * 128
                                           + scores * 4 + ds_loads * 256 + scores * 2 * 8)
    # per block: two barriers a V and a K chunk, one for each product's partials, one for the last K chunk's dQ, two
    # for each chunk staged again
    assert launch["barriers"] == threadgroups * blocks * (2 * (v_chunks + k_chunks) + 2 + 1 + 2 * (k_chunks - 1))
    assert not launch["spills"]


@pytest.mark.parametrize("E, Ev", [(512, 512), (576, 512)])
def test_sliced_dkdv_computes_each_product_and_exp_once(E, Ev):
    """Counts known by hand for dK and dV in 4 column slices sharing each 64-query block's P^T and dS^T: every product
    of S^T = K Q^T, dP^T = V dO^T, dV = P^T dO and dK = dS^T Q exactly once, one exp per score and one division
    (1 / sum) per query of a block in each threadgroup; Q read from device memory twice per block (for S^T and for
    dK), dO once (each chunk serves dP^T and dV); each SIMD-group streams its keys' K and V once per block.
    Threadgroup memory: each staged element written once, one staged tile read per product, each score's softmax
    stats and D read once, P^T and dS^T stored once and loaded by each slice for each chunk holding its columns."""
    launch = _sliced_backward_launch(E, Ev, "attention_backward_dkdv")
    d = launch["defines"]
    slices, q_chunks, do_chunks = int(d["MFA_SLICES"]), int(d["MFA_Q_CHUNKS"]), int(d["MFA_DO_CHUNKS"])
    assert slices == 4 and d["MFA_BLOCK_Q"] == "64" and d["MFA_BLOCK_KV"] == "16"
    assert d["MFA_STREAM_K"] == d["MFA_STREAM_V"] == "1"
    assert q_chunks == do_chunks == 3  # 64 rows of at most 196 columns of half beside 4 KiB of scores: 30000 bytes
    scores, keys, blocks = B * H * SLICED_L * SLICED_L, B * H * SLICED_L, SLICED_L // 64
    threadgroups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    queries_staged = threadgroups * blocks * 64  # each block's queries in every threadgroup
    assert launch["mma"] == scores // 64 * (2 * E + 2 * Ev) // 8
    assert launch["transcendentals"] == scores + queries_staged and launch["divisions"] == queries_staged
    q_chunk, do_chunk = (-(-dim // (8 * n)) * 8 for dim, n in ((E, q_chunks), (Ev, do_chunks)))
    staged_columns = 2 * E + Ev  # Q twice, dO once
    streamed = keys * blocks * slices * (E + Ev) * 2  # K and V, by each slice for each block
    dk_dv = keys * (E + Ev) * 2
    assert launch["device_bytes"] == queries_staged * (staged_columns * 2 + 12) + streamed + dk_dv
    def chunks_of_slices(dim, chunk, chunks):  # over the slices, the chunks holding some of each one's columns
        width = -(-dim // (8 * slices)) * 8
        return sum(c * chunk < (i + 1) * width and i * width < (c + 1) * chunk
                   for i in range(slices) for c in range(chunks))
    loaded = chunks_of_slices(E, q_chunk, q_chunks) + chunks_of_slices(Ev, do_chunk, do_chunks)
    score_loads = keys // 8 * blocks * loaded * 8  # per row group, block, slice and chunk: 8 tiles
    written_columns = q_chunk * 2 * q_chunks + do_chunk * do_chunks  # whole chunks, a short last one zero-filled
    assert launch["threadgroup_bytes"] == (queries_staged * (written_columns * 2 + 12) + scores * 12
                                           + launch["mma"] * 128 + scores * 8 + score_loads * 256)
    # per block: two a chunk of Q, of dO and of Q again for dK (the first Q chunk's first one also guards the stats,
    # the second pass's first one also guards dS^T replacing P^T)
    assert launch["barriers"] == threadgroups * blocks * (4 * q_chunks + 2 * do_chunks)
    assert not launch["spills"]


# GEMM: fp16 and fp32 at 1024^3 and 4096 x 4096 x 1024 on both tables. Their plans give a worker to every tile and
# every tile is whole (sizes multiples of the blocks), so every worker runs the same steps: the counters of the first
# SAMPLE workers of the real plan are SAMPLE / workers of the launch's (checked: two workers count exactly twice
# one), and a whole launch of this size would take minutes as a profile build.
GEMM_CASES = [pytest.param(dtype, family, shape, id=f"{str(dtype)[6:]}-{family}-{'x'.join(map(str, shape))}")
              for family in ("apple7", "apple9") for dtype in (torch.float16, torch.float32)
              for shape in ((1024, 1024, 1024), (4096, 4096, 1024))]
SIMDGROUPS = 4  # per GEMM threadgroup
ACCUMULATORS = {"apple7": 9, "apple9": 16}  # 8x8 tiles of C per SIMD-group: MFA's 24 x 24 on M1, 32 x 32 on M3
THREADGROUP_BYTES_PER_MMA = {"apple7": 128, "apple9": 32}  # M3: interior blocks straight from device memory
_RUN = executors.run


def _gemm_workers(monkeypatch, dtype, family, shape, workers):
    """The profile of the first `workers` threadgroups of the GEMM plan for `shape`."""
    m, n, k = shape
    a, b = torch.zeros(1, m, k, dtype=dtype), torch.zeros(1, k, n, dtype=dtype)

    def first_workers(route, plan, tensors, checks=None, family=None):
        (launch,) = plan.launches  # no Stream-K reduction: a worker per tile
        assert tuple(launch.threadgroups) == ((m // 64) * (n // 64), 1, 1)
        launch.threadgroups = [workers, 1, 1]
        plan.launches = [launch]
        return _RUN(route, plan, tensors, checks, family)

    monkeypatch.setattr(executors, "run", first_workers)
    with profile() as prof:
        metal_gemm.gemm(ROUTE, a, b, None, family=family)
    (launch,) = prof.launches
    return launch


@pytest.mark.parametrize("dtype, family, shape", GEMM_CASES)
def test_gemm_work_targets(monkeypatch, dtype, family, shape):
    one, two = (_gemm_workers(monkeypatch, dtype, family, shape, w) for w in (1, 2))
    for key in ("mma", "threadgroup_bytes", "device_bytes", "device_accesses", "barriers", "conversions"):
        assert two[key] == 2 * one[key], key  # every worker does the same work
    k = shape[2]
    assert two["mma"] / (2 * SIMDGROUPS * (k // 8)) >= ACCUMULATORS[family]  # each MMA step updates every accumulator
    assert two["threadgroup_bytes"] <= THREADGROUP_BYTES_PER_MMA[family] * two["mma"]
    assert two["device_bytes"] >= 8 * two["device_accesses"]  # vector loads and stores, not scalar
    assert not two["spills"]
