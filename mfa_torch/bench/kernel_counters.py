"""Work counters of the Metal kernels under the emulator (emulator.profile()), per case, GPU family and kernel, with
the ratios the kernels are tuned against and the time a model predicts from them (bench/model.py: a model, never a
measurement), next to what metal-flash-attention's published efficiency would take for the same work."""
from typing import NamedTuple

import torch

from .. import block_masks
from ..paged_kv import PagedKV
from ..emulator import counters, profile
from ..metal import attention as metal_attention
from ..metal import gemm as metal_gemm
from . import formulas, model
from .progress import progress

FAMILIES = ("apple7", "apple9")
COUNTER_COLUMNS = ("case", "family", "kernel", "threadgroups", "mma", "tg_bytes_per_mma", "device_bytes_per_mma",
                   "device_access_bytes", "mma_per_barrier", "barriers_per_32_keys", "transcendentals_per_score", "conversions", "registers", "spills",
                   "bound_by", "useful_mma_fraction", "model_us", "mfa_published_us")
# kernel_counters.csv also holds every raw counter of each launch
RAW_COLUMNS = ("threadgroup_memory", *counters.COUNTERS, "mma_by_type", "defines")
CSV_COLUMNS = COUNTER_COLUMNS + RAW_COLUMNS
# metal-flash-attention's README: fraction of nominal FLOPS (forward at D = 64 / 128 / 256; fwd+bwd in
# FlashAttention-2 work terms; GEMM at 1024^3, M1 Max only). Its figures are for long sequences: at the short
# lengths the emulator can run they are a yardstick, not a prediction.
MFA_FORWARD = {"apple7": {64: 0.86, 128: 0.85, 256: 0.86}, "apple9": {64: 0.94, 128: 0.91, 256: 0.82}}
MFA_FORWARD_BACKWARD = {"apple7": 0.63, "apple9": 0.66}  # midpoints of 62-64% and 61-71%
MFA_GEMM = {"float16": 0.933, "float32": 0.872}  # M1 Max
ROUTE = "emulator"


SIZE, HEADS = 256, 4  # L = S (and GEMM M = N = K); heads enough that the planners do not split the keys
LARGE_DIM_SIZE = 128  # L = S of the cases with head dims past 256: four times the work per score


class AttentionCase(NamedTuple):
    dtype: torch.dtype
    head_dim: int
    value_dim: int
    length: int
    heads: int = HEADS
    sinks: bool = False
    block_sparse: bool = False  # a FlexAttention block mask with half of its 32 x 64 blocks empty


# What the full run adds to its grid: the largest head dims (E = Ev = 512, and DeepSeek's E = 576 with Ev = 512),
# attention sinks and a block-sparse mask.
FEATURE_CASES = (AttentionCase(torch.float16, 512, 512, LARGE_DIM_SIZE),
                 AttentionCase(torch.float16, 576, 512, LARGE_DIM_SIZE),
                 AttentionCase(torch.float16, 64, 64, SIZE, sinks=True),
                 AttentionCase(torch.float16, 64, 64, SIZE, block_sparse=True))
SPARSE_BLOCK = (32, 64)


class DecodeCase(NamedTuple):
    """One query per head against a long cache, GQA (16 query heads on 2 K/V heads): contiguous, or paged."""
    dtype: torch.dtype
    head_dim: int
    keys: int
    page_size: int = 0  # 0: a contiguous cache
    q_heads: int = 16
    kv_heads: int = 2


# Decoding from a contiguous cache and from one in pages of 16 rows (shuffled): the paged forward's products and
# threadgroup traffic are the contiguous one's; it adds the block-table reads.
DECODE_CASES = (DecodeCase(torch.float16, 128, 2048), DecodeCase(torch.float16, 128, 2048, page_size=16))


def decode_rows(case, family):
    """The forward (and the split-KV combine) of one decoding step."""
    gen = torch.Generator().manual_seed(0)
    d, keys = case.head_dim, case.keys
    q = torch.randn(1, case.q_heads, 1, d, generator=gen).to(case.dtype)
    pages = None
    if case.page_size:
        count = keys // case.page_size
        k, v = (torch.randn(count, case.kv_heads, case.page_size, d, generator=gen).to(case.dtype) for _ in range(2))
        pages = PagedKV(torch.randperm(count, generator=gen).view(1, count).to(torch.int32),
                        torch.tensor([[0, keys]], dtype=torch.int32))
    else:
        k, v = (torch.randn(1, case.kv_heads, keys, d, generator=gen).to(case.dtype) for _ in range(2))
    label = f"decode {str(case.dtype).removeprefix('torch.')} D={d} GQA {case.q_heads}/{case.kv_heads} S={keys} " + \
        (f"paged {case.page_size}" if case.page_size else "contiguous")
    with profile() as forward:
        out, stats = metal_attention.forward(ROUTE, q, k, v, None, None, None, None, 1, keys, d ** -0.5, -1, -1, True,
                                             0.0, 0.0, None, pages=pages, family=family)
    flops = formulas.attention_forward_flops(1, case.q_heads, 1, keys, d, False)
    published = flops / (MFA_FORWARD[family].get(d, min(MFA_FORWARD[family].values())) *
                         model.CHIPS[family].nominal_tflops * 1e12)
    scores = case.q_heads * keys
    return _rows(label, family, forward.launches, _bytes(q, k, v, out, stats), published, keys=keys, scores=scores,
                 useful_mma=scores / 64 * 2 * d / 8)


def _block_sparse_mask(length, heads):
    """A random block mask (seeded) over length x length: each 32 x 64 block attends with probability 1/2, and
    within an attending block a random half of the elements (partial blocks), or all of them (full blocks)."""
    from torch.nn.attention.flex_attention import create_block_mask
    gen = torch.Generator().manual_seed(1)
    on = torch.rand(-(-length // SPARSE_BLOCK[0]), -(-length // SPARSE_BLOCK[1]), generator=gen) < 0.5
    full = torch.rand(on.shape, generator=gen) < 0.5
    coin = torch.rand(length, length, generator=gen) < 0.5

    def mask_mod(b, h, q, kv):
        qb, kb = q // SPARSE_BLOCK[0], kv // SPARSE_BLOCK[1]
        return on[qb, kb] & (full[qb, kb] | coin[q, kv])
    block_mask = create_block_mask(mask_mod, None, None, length, length, device="cpu", BLOCK_SIZE=SPARSE_BLOCK)
    return block_masks.compact(block_mask, 1, heads, length, length, "cpu")


def attention_cases(quick, dtypes=None, sizes=None, head_dims=None):
    """The counted attention calls: a grid of dtypes x head dims (E = Ev) x lengths, and in a full run without
    --dtypes, --sizes or --head-dims the FEATURE_CASES."""
    grid = [AttentionCase(dtype, d, d, length) for dtype in dtypes or ((torch.float16,) if quick else
                                                                       (torch.float16, torch.bfloat16))
            for d in head_dims or ((64,) if quick else (64, 128)) for length in sizes or (SIZE,)]
    return grid + ([] if quick or dtypes or sizes or head_dims else list(FEATURE_CASES))


def gemm_cases(quick, dtypes=None, sizes=None):
    dtypes = [d for d in dtypes or (torch.float16, torch.float32) if d != torch.bfloat16]
    return [(dtype, size) for dtype in (dtypes[:1] if quick else dtypes) for size in sizes or (SIZE,)]


def _ratios(launch, keys=None, scores=None):
    mma = launch["mma"]
    groups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    return {"threadgroups": groups, "mma": mma,
            "tg_bytes_per_mma": launch["threadgroup_bytes"] / mma if mma else None,
            "device_bytes_per_mma": launch["device_bytes"] / mma if mma else None,
            "device_access_bytes": launch["device_bytes"] / launch["device_accesses"] if launch["device_accesses"] else None,
            "mma_per_barrier": mma / launch["barriers"] if launch["barriers"] else None,
            "barriers_per_32_keys": launch["barriers"] / groups / (keys / 32) if keys else None,
            "transcendentals_per_score": launch["transcendentals"] / scores if scores else None,
            "conversions": launch["conversions"], "registers": launch["registers"], "spills": launch["spills"],
            "bound_by": model.bound_by(launch)}


def _raw(launch):
    raw = {name: launch[name] for name in RAW_COLUMNS}
    raw["mma_by_type"] = " ".join(f"{k}:{v}" for k, v in launch["mma_by_type"].items())
    raw["defines"] = " ".join(f"{k}={v}" for k, v in launch["defines"].items())
    return raw


def _rows(label, family, launches, footprint, published_seconds, keys=None, scores=None, useful_mma=None):
    """useful_mma: the 8x8x8 products the op needs at least; the launches' excess is recomputation."""
    rows = [{"case": label, "family": family, "kernel": launch["kernel"], **_ratios(launch, keys, scores),
             **_raw(launch)} for launch in launches]
    executed = sum(launch["mma"] for launch in launches)
    rows.append({"case": label, "family": family, "kernel": "(all launches)",
                 "useful_mma_fraction": useful_mma / executed if useful_mma and executed else None,
                 "model_us": model.predicted_microseconds(launches, family, footprint),
                 "mfa_published_us": published_seconds * 1e6})
    return rows


def _bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def attention_rows(case, family):
    dtype, e, ev, length, heads = case.dtype, case.head_dim, case.value_dim, case.length, case.heads
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, heads, length, e, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(1, heads, length, ev, generator=gen).to(dtype)
    sinks = torch.randn(heads, generator=gen) if case.sinks else None
    blocks = _block_sparse_mask(length, heads) if case.block_sparse else None
    args = (None, None, None, None, length, length, e ** -0.5, -1, -1, False, 0.0, 0.0, None)
    dims = f"D={e}" if e == ev else f"E={e} Ev={ev}"
    label = f"attention {str(dtype).removeprefix('torch.')} {dims} H={heads} L=S={length}" + \
        (" sinks" if case.sinks else "") + (" block-sparse" if case.block_sparse else "")
    with profile() as forward:
        out, stats = metal_attention.forward(ROUTE, q, k, v, *args, sinks, blocks=blocks, family=family)
    grad = torch.randn_like(out)
    with profile() as backward:
        metal_attention.backward(ROUTE, grad, q, k, v, out, stats, *args, False, blocks=blocks, family=family)
    # the scores of the blocks a block mask does not leave empty (every score without one)
    attended = 1.0 if blocks is None else float((blocks.states != block_masks.EMPTY).float().mean())
    d = (e + ev) / 2  # the FLOP formulas take one head dim: QK^T is over E, PV over Ev
    flops = formulas.attention_forward_flops(1, heads, length, length, d, False) * attended
    nominal = model.CHIPS[family].nominal_tflops * 1e12
    scores = heads * length * length * attended
    tiles = scores / 64  # 8x8 score tiles; each product over a head dim takes dim / 8 MMAs
    rows = _rows(label + " fwd", family, forward.launches, _bytes(q, k, v, out, stats),
                 flops / (MFA_FORWARD[family].get(e, min(MFA_FORWARD[family].values())) * nominal),
                 keys=length, scores=scores, useful_mma=tiles * (e + ev) / 8)
    # MFA publishes forward and backward together: its backward is taken at that efficiency (2.5 forwards of work).
    # At least: S = Q K^T, dQ and dK over E, dP and dV over Ev.
    rows += _rows(label + " bwd", family, backward.launches, _bytes(q, k, v, out, grad, stats) + _bytes(q, k, v),
                  2.5 * flops / (MFA_FORWARD_BACKWARD[family] * nominal), keys=length, scores=scores,
                  useful_mma=tiles * (3 * e + 2 * ev) / 8)
    return rows


def gemm_rows(case, family):
    dtype, size = case
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1, size, size, generator=gen).to(dtype) for _ in range(2))
    with profile() as prof:
        c = metal_gemm.gemm(ROUTE, a, b, None, family=family)
    flops = 2 * size ** 3
    published = MFA_GEMM[str(dtype).removeprefix("torch.")] * model.CHIPS[family].nominal_tflops * 1e12
    label = f"gemm {str(dtype).removeprefix('torch.')} {size}^3"
    return _rows(label, family, prof.launches, _bytes(a, b, c), flops / published, keys=size)


def counter_rows(quick, dtypes=None, sizes=None, head_dims=None):
    jobs = [(attention_rows, case) for case in attention_cases(quick, dtypes, sizes, head_dims)]
    if not (quick or dtypes or sizes or head_dims):
        jobs += [(decode_rows, case) for case in DECODE_CASES]
    jobs += [(gemm_rows, case) for case in gemm_cases(quick, dtypes, sizes)]
    rows = []
    for family in FAMILIES:
        for make, case in progress(jobs, f"emulator counters ({family})", lambda job: str(job[1])):
            rows += make(case, family)
    return rows
