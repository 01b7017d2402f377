"""`python -m mfa_torch.emulator.bench`: how fast the emulator runs kernels on this machine.

Prints synchronisation points (barrier and SIMD-group arrivals) per second on one worker thread, and
the time of a 256^3 fp32 simdgroup_matrix GEMM and of an attention forward (B=1, H=2, L=S=512, D=64)
on all cores, each checked against a float64 reference. CPU seconds are shown next to wall seconds
because other processes may share the cores.
"""
import ctypes
import pathlib
import time

import torch

from . import compile

KERNELS = pathlib.Path(__file__).with_name("bench_kernels.metal")


def _timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_sync_points(lib):
    groups, threads, iterations = 8, 256, 2000
    out = torch.zeros(groups * threads)
    wall, cpu = _timed(lambda: lib.dispatch("sync_points", {0: out, 1: ctypes.c_uint32(iterations)}, (groups,), (threads,),
                                            os_threads=1))
    points = lib.last_sync_points
    print(f"sync points: {points / 1e6:.1f} M in {wall:.3f} s wall ({cpu:.3f} s CPU) on one worker: "
          f"{points / wall / 1e6:.1f} M/s wall, {points / cpu / 1e6:.1f} M/s per CPU-second")


def bench_gemm(lib):
    n = 256
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    c = torch.zeros(n, n)
    dims = (ctypes.c_uint32 * 4)(n, n, n, 0)  # uint3 is 16 bytes
    wall, cpu = _timed(lambda: lib.dispatch("gemm_f32", {0: a, 1: b, 2: c, 3: dims}, (n // 32, n // 32), (128,)))
    error = (c.double() - a.double() @ b.double()).abs().max().item()
    print(f"gemm 256^3 fp32: {wall:.3f} s wall ({cpu:.3f} s CPU), {lib.last_sync_points / 1e6:.1f} M sync points, "
          f"max abs error vs fp64 {error:.1e}")


def bench_attention(lib):
    heads, length, dim = 2, 512, 64
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(heads, length, dim, generator=gen) for _ in range(3))
    o = torch.zeros(heads, length, dim)
    lengths = (ctypes.c_uint32 * 2)(length, length)
    wall, cpu = _timed(lambda: lib.dispatch("attention_f32", {0: q, 1: k, 2: v, 3: o, 4: lengths}, (length // 32, heads), (128,)))
    scores = (q.double() @ k.double().transpose(1, 2)) / dim**0.5
    error = (o.double() - torch.softmax(scores, dim=-1) @ v.double()).abs().max().item()
    print(f"attention B=1 H=2 L=S=512 D=64 fp32: {wall:.3f} s wall ({cpu:.3f} s CPU), "
          f"{lib.last_sync_points / 1e6:.1f} M sync points, max abs error vs fp64 {error:.1e}")


def main():
    start = time.perf_counter()
    lib = compile(KERNELS)
    print(f"compile (or load from cache): {time.perf_counter() - start:.2f} s")
    bench_sync_points(lib)
    bench_gemm(lib)
    bench_attention(lib)


if __name__ == "__main__":
    main()
