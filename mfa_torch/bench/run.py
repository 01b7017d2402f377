"""Running a timed sweep: every case with every implementation, one row (a dict of CSV columns) each."""
import torch

from . import formulas, implementations, measure
from .progress import progress

ATTENTION_COLUMNS = ("impl", "device", "route", "pass", "dtype", "B", "Hq", "Hk", "L", "S", "D", "causal",
                     "median_ms", "tflops", "ginstrs_per_s", "extra_mem_mib", "samples", "calls_per_sample", "note")
GEMM_COLUMNS = ("impl", "device", "route", "dtype", "M", "N", "K", "median_ms", "gflops", "extra_mem_mib", "samples",
                "calls_per_sample", "note")


def pass_name(backward):
    return "fwd+bwd" if backward else "fwd"


def attention_work(case, backward):
    """(FLOPs, instructions) of one call: the forward, plus the backward for a forward+backward call."""
    shape = (case.B, case.Hq, case.L, case.S, case.D, case.causal)
    flops = formulas.attention_forward_flops(*shape)
    instructions = formulas.attention_forward_instructions(*shape)
    if backward:
        flops += formulas.attention_backward_flops(*shape)
        instructions += formulas.attention_backward_instructions(*shape)
    return flops, instructions


def _timing_columns(timing):
    mib = None if timing.extra_memory is None else timing.extra_memory / 2**20
    return {"median_ms": timing.median_ms, "extra_mem_mib": mib, "samples": timing.samples,
            "calls_per_sample": timing.calls_per_sample}


def measured(make_call, settings, dev):
    """(timing columns, note): a failure (out of memory, a dtype MLX lacks...) becomes the row's note so that one
    case cannot end a long sweep."""
    try:
        return _timing_columns(measure.time_call(make_call(), settings)), ""
    except Exception as error:  # noqa: BLE001  (reported in the row, never hidden)
        if dev.type == "mps":
            torch.mps.empty_cache()
        return {}, f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def attention_row(impl, case, backward, dev, settings, budget):
    row = {"impl": impl, "device": implementations.device_name(impl, dev),
           "route": implementations.attention_route(case, dev)[0] if impl == "mfa_torch" else "-",
           "pass": pass_name(backward), "dtype": case.dtype_name, "B": case.B, "Hq": case.Hq, "Hk": case.Hk,
           "L": case.L, "S": case.S, "D": case.D, "causal": case.causal}
    note = implementations.attention_skip_reason(impl, case, backward, dev, budget)
    if note:
        return {**row, "note": note}
    timing, note = measured(lambda: implementations.attention_call(impl, case, backward, dev), settings, dev)
    if timing:
        flops, instructions = attention_work(case, backward)
        seconds = timing["median_ms"] / 1e3
        timing.update(tflops=flops / seconds / 1e12, ginstrs_per_s=instructions / 1e9 / seconds)
    return {**row, **timing, "note": note}


def gemm_row(impl, case, dev, settings, budget):
    row = {"impl": impl, "device": implementations.device_name(impl, dev),
           "route": implementations.gemm_route(case, dev) if impl == "mfa_torch" else "-",
           "dtype": case.dtype_name, "M": case.size, "N": case.size, "K": case.size}
    note = implementations.gemm_skip_reason(case, budget)
    if note:
        return {**row, "note": note}
    timing, note = measured(lambda: implementations.gemm_call(impl, case, dev), settings, dev)
    if timing:
        timing["gflops"] = formulas.gemm_flops(case.size, case.size, case.size) / (timing["median_ms"] / 1e3) / 1e9
    return {**row, **timing, "note": note}


def attention_rows(cases, dev, settings, budget):
    jobs = [(impl, case, backward) for case in cases for backward in (False, True)
            for impl in implementations.available()]
    return [attention_row(impl, case, backward, dev, settings, budget) for impl, case, backward in
            progress(jobs, "attention", lambda j: f"{j[0]} {pass_name(j[2])} {j[1].label()}")]


def gemm_rows(cases, dev, settings, budget):
    jobs = [(impl, case) for case in cases for impl in implementations.available()]
    return [gemm_row(impl, case, dev, settings, budget) for impl, case in
            progress(jobs, "gemm", lambda j: f"{j[0]} {j[1].label()}")]
