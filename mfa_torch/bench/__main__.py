"""Command line: python -m mfa_torch.bench [--quick] [--out DIR] [--what attention,gemm] [--dtypes ...] ..."""
import argparse
import os
import sys

import torch

import mfa_torch
from .. import _C
from . import cases, decode, environment, implementations, kernel_counters, measure, report, run, structured, work

TIMED = [
    "Latency: the median over samples, after one warm-up call; a sample runs one or more calls back to back and then "
    "waits for the device (torch.mps.synchronize(); mx.eval for MLX); short calls are batched into samples of about "
    "10 ms and the time divided by the calls.",
    "Attention: batch B, Hq query heads, Hk key/value heads (GQA when Hk < Hq), L = S, head dim D (= value dim); "
    "causal is upper-left (is_causal). fwd+bwd: one forward and the gradients of q, k and v.",
    "TFLOP/s: forward 4*L*S*D*B*Hq FLOPs, backward 2.5x the forward, halved for causal. GINSTRS/s, "
    "metal-flash-attention's unit: forward (2D+5)*L*S, backward (3D+5)*L*S + (4D+5)*L*S instructions per head and "
    "batch element, divided by 1e9, halved for causal. GEMM: 2*M*N*K FLOPs.",
    "MiB: memory beyond the inputs during one call: on MPS torch.mps.driver_allocated_memory() after the call minus "
    "before it (after empty_cache; the caching allocator keeps the call's peak, rounded to its heaps); for MLX its "
    "peak memory minus the memory active before; n/a on a CPU.",
]
STRUCTURED = [
    "Structured attention (off Apple GPUs): what PyTorch's SDPA cannot take as it is, all causal: a sliding window "
    f"of {structured.WINDOW} keys, ALiBi, a softcap of {structured.SOFTCAP:g}. mfa_torch runs on the route `explain` "
    "names; torch+mask is PyTorch's SDPA with the equivalent mask (none expresses a softcap); flex is "
    "torch.compile(flex_attention) with the equivalent block mask and score_mod (its compilation is the warm-up call, "
    "not timed; no backward off CUDA). MiB on a CPU: the resident memory a call added at its peak (Linux).",
]
DECODE = [
    "Decode: transformers' generate_batch (continuous batching, a paged KV cache of "
    f"{decode.PAGE_SIZE}-token pages) on a tiny Llama with random weights, greedy, prompts of "
    f"{', '.join(map(str, decode.PROMPT_LENGTHS))} tokens: mfa_torch's \"paged|mfa\" (full-attention layers read K "
    "and V from the cache's pages) against transformers' \"paged|sdpa\" (PyTorch's SDPA on the gathered K and V), "
    "same run. Tokens per second over every token after each request's first.",
]
ON_CPU = ("**CPU reference-route times, not GPU numbers.** No Apple GPU here: mfa_torch runs its reference route "
          "(PyTorch operations) on the CPU and `torch` is PyTorch's CPU path. Run this on a Mac for GPU numbers.")
NO_EXECUTOR = ("**This build of mfa_torch has no MPS executor**: its column is the reference route (PyTorch "
               "operations on the GPU), not the Metal kernels. Reinstall mfa_torch on this Mac to build the executor.")
ON_EMULATOR = [
    "**The emulator measures work, not speed**: it runs the shipped Metal kernels on CPU cores, one fiber per GPU "
    "thread, so times would say nothing about a GPU.",
    "tiles_computed: key/value tiles the kernels computed (their MFA_COUNT_TILES counters, summed over "
    "threadgroups); tiles_minimum: the (query block, key block) tiles that intersect the region the causal mask "
    "allows, computed from the block sizes the plans chose; tiles_dense: every tile. GEMM is dense by construction "
    "and not counted.",
    "Work counters (mfa_torch.emulator.profile(), exact counts of the kernel code as written), per kernel launch, "
    "planned for each GPU family: tg_bytes_per_mma: threadgroup bytes read and written per 8x8x8 MMA; "
    "device_bytes_per_mma: device bytes read and written per MMA; device_access_bytes: mean bytes per device access "
    "(vector loads are wide); mma_per_barrier: MMAs per threadgroup barrier; barriers_per_32_keys: threadgroup "
    "barriers per threadgroup per 32 keys (GEMM: per 32 of K); transcendentals_per_score: exp, log, tanh and "
    "divisions per attention score; registers: tile registers alive at once plus an allowance (spills above 128).",
    "**model_us is a model, not a measurement** (mfa_torch/bench/model.py): a roofline over the matrix unit, "
    "threadgroup memory and instruction issue from those counters with published figures of the family's chip "
    "(M1 Max for apple7, M3 Max for apple9), optimistic by construction. mfa_published_us: the same work at "
    "metal-flash-attention's published efficiency on that chip (measured on long sequences, so a yardstick). Only "
    "`python -m mfa_torch.bench` on a Mac measures time.",
]


def _csv_list(convert):
    def parse(text):
        try:
            return tuple(dict.fromkeys(convert(item.strip()) for item in text.split(",") if item.strip()))
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(f"cannot read {text!r}") from None
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m mfa_torch.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a subset that runs in about a minute")
    p.add_argument("--out", default="mfa_bench_results", help="output directory (default ./mfa_bench_results)")
    p.add_argument("--what", default=("attention", "structured", "gemm", "decode"), type=_csv_list(str),
                   help="attention, structured (windows, ALiBi, softcap against PyTorch's paths; not on MPS), gemm, "
                        "decode (transformers' generate_batch with paged|mfa and paged|sdpa); default all")
    p.add_argument("--dtypes", type=_csv_list(cases.DTYPES.__getitem__),
                   help="comma list of float32, float16, bfloat16 (or fp32, fp16, bf16)")
    p.add_argument("--sizes", type=_csv_list(int), help="sequence lengths L = S and GEMM sizes, e.g. 1024,4096")
    p.add_argument("--head-dims", type=_csv_list(int), help="attention head dims, e.g. 64,80,128")
    p.add_argument("--emulator", action="store_true",
                   help="count the Metal kernels' work under the emulator instead of timing (also when the "
                        "mfa_torch backend is \"emulator\")")
    args = p.parse_args(argv)
    unknown = set(args.what) - {"attention", "structured", "gemm", "decode"}
    if unknown:
        p.error(f"--what: unknown {', '.join(sorted(unknown))}")
    return args


def emulator_report(args):
    rows = work.work_rows(cases.emulator_cases(args.quick, args.dtypes, args.sizes, args.head_dims))
    counted = kernel_counters.counter_rows(args.quick, args.dtypes, args.sizes, args.head_dims)
    header = environment.describe(torch.device("cpu"), "emulator work counts (not times)", emulator=True)
    return report.write_all(args.out, header, ON_EMULATOR, work_rows=rows, counter_rows=counted)


def _device_warnings(dev):
    if dev.type != "mps":
        return [ON_CPU]
    return [] if _C.has_mps_executor() else [NO_EXECUTOR]


def timed_report(args):
    dev = environment.device()
    sweep = cases.timed_sweep(dev, args.what, args.quick, args.dtypes, args.sizes, args.head_dims)
    mode = "timed on the Apple GPU (mps)" if dev.type == "mps" else "timed on the CPU: reference-route times"
    header = environment.describe(dev, mode)
    if sweep.attention:
        header.append(("mfa_torch route (mfa_torch.explain, first case)",
                       implementations.attention_route(sweep.attention[0], dev)[1]))
    settings = measure.QUICK if args.quick else measure.TimingSettings()
    budget = environment.memory_budget(dev)
    attention = run.attention_rows(sweep.attention, dev, settings, budget)
    structured_cases = structured.cases(dev, args.quick, args.dtypes, args.sizes, args.head_dims) \
        if "structured" in args.what else ()
    structured_rows = structured.rows(structured_cases, dev, settings)
    gemm = run.gemm_rows(sweep.gemm, dev, settings, budget)
    decode_rows = decode.rows(dev, args.quick) if "decode" in args.what else []
    explanations = _device_warnings(dev) + TIMED + (STRUCTURED if structured_rows else []) + \
        (DECODE if decode_rows else [])
    return report.write_all(args.out, header, explanations, attention_rows=attention, gemm_rows=gemm,
                            structured_rows=structured_rows, decode_rows=decode_rows)


def main(argv=None):
    args = parse_args(argv)
    emulator = args.emulator or mfa_torch.get_backend() == "emulator"
    text = emulator_report(args) if emulator else timed_report(args)
    print(text)
    print(f"results written to {os.path.abspath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
