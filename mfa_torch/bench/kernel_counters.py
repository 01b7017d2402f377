"""Work counters of the Metal kernels under the emulator (emulator.profile()), per case, GPU family and kernel, with
the ratios the kernels are tuned against and the time a model predicts from them (bench/model.py: a model, never a
measurement), next to what metal-flash-attention's published efficiency would take for the same work."""
import torch

from ..emulator import counters, profile
from ..metal import attention as metal_attention
from ..metal import gemm as metal_gemm
from . import formulas, model
from .progress import progress

FAMILIES = ("apple7", "apple9")
COUNTER_COLUMNS = ("case", "family", "kernel", "threadgroups", "mma", "tg_bytes_per_mma", "device_access_bytes",
                   "barriers_per_32_keys", "transcendentals_per_score", "conversions", "registers", "spills",
                   "bound_by", "model_us", "mfa_published_us")
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


def attention_cases(quick, dtypes=None, sizes=None, head_dims=None):
    """(dtype, D, L, heads) of the counted attention calls."""
    dtypes = dtypes or ((torch.float16,) if quick else (torch.float16, torch.bfloat16))
    return [(dtype, d, length, HEADS) for dtype in dtypes for d in head_dims or ((64,) if quick else (64, 128))
            for length in sizes or (SIZE,)]


def gemm_cases(quick, dtypes=None, sizes=None):
    dtypes = [d for d in dtypes or (torch.float16, torch.float32) if d != torch.bfloat16]
    return [(dtype, size) for dtype in (dtypes[:1] if quick else dtypes) for size in sizes or (SIZE,)]


def _ratios(launch, keys=None, scores=None):
    mma = launch["mma"]
    groups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    return {"threadgroups": groups, "mma": mma,
            "tg_bytes_per_mma": launch["threadgroup_bytes"] / mma if mma else None,
            "device_access_bytes": launch["device_bytes"] / launch["device_accesses"] if launch["device_accesses"] else None,
            "barriers_per_32_keys": launch["barriers"] / groups / (keys / 32) if keys else None,
            "transcendentals_per_score": launch["transcendentals"] / scores if scores else None,
            "conversions": launch["conversions"], "registers": launch["registers"], "spills": launch["spills"],
            "bound_by": model.bound_by(launch)}


def _raw(launch):
    raw = {name: launch[name] for name in RAW_COLUMNS}
    raw["mma_by_type"] = " ".join(f"{k}:{v}" for k, v in launch["mma_by_type"].items())
    raw["defines"] = " ".join(f"{k}={v}" for k, v in launch["defines"].items())
    return raw


def _rows(label, family, launches, footprint, published_seconds, keys=None, scores=None):
    rows = [{"case": label, "family": family, "kernel": launch["kernel"], **_ratios(launch, keys, scores),
             **_raw(launch)} for launch in launches]
    rows.append({"case": label, "family": family, "kernel": "(all launches)",
                 "model_us": model.predicted_microseconds(launches, family, footprint),
                 "mfa_published_us": published_seconds * 1e6})
    return rows


def _bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def attention_rows(dtype, d, length, heads, family):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, d, generator=gen).to(dtype) for _ in range(3))
    args = (None, None, None, None, length, length, d ** -0.5, -1, -1, False, 0.0, 0.0, None)
    label = f"attention {str(dtype).removeprefix('torch.')} D={d} H={heads} L=S={length}"
    with profile() as forward:
        out, stats = metal_attention.forward(ROUTE, q, k, v, *args, family=family)
    grad = torch.randn_like(out)
    with profile() as backward:
        metal_attention.backward(ROUTE, grad, q, k, v, out, stats, *args, False, family=family)
    flops = formulas.attention_forward_flops(1, heads, length, length, d, False)
    nominal = model.CHIPS[family].nominal_tflops * 1e12
    scores = heads * length * length
    rows = _rows(label + " fwd", family, forward.launches, _bytes(q, k, v, out, stats),
                 flops / (MFA_FORWARD[family].get(d, min(MFA_FORWARD[family].values())) * nominal),
                 keys=length, scores=scores)
    # MFA publishes forward and backward together: its backward is taken at that efficiency (2.5 forwards of work)
    rows += _rows(label + " bwd", family, backward.launches, _bytes(q, k, v, out, grad, stats) + _bytes(q, k, v),
                  2.5 * flops / (MFA_FORWARD_BACKWARD[family] * nominal), keys=length, scores=scores)
    return rows


def gemm_rows(dtype, size, family):
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
    jobs += [(gemm_rows, case) for case in gemm_cases(quick, dtypes, sizes)]
    rows = []
    for family in FAMILIES:
        for make, case in progress(jobs, f"emulator counters ({family})", lambda job: str(job[1])):
            rows += make(*case, family)
    return rows
