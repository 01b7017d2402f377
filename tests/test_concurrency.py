"""Concurrency: attention and GEMM called from several Python threads at once give the results of sequential calls
(bitwise) and of the fp64 oracle, on the reference route and on the emulator route; and each kernel variant is
compiled (loaded) once per process however many threads ask for it at the same moment.

The backend selection is process-wide, so it is set once around the threads. The emulator releases the GIL while a
kernel runs, so emulator launches from different threads really overlap (each spreading its threadgroups over the
CPU cores).
"""
import threading

import pytest
import torch

import mfa_torch
from mfa_torch.metal import emulator_executor
from oracle import assert_rule, attention_fp64, matmul_fp64

THREADS = 6


def _run_in_threads(jobs):
    """Runs every job (a callable) on its own thread, all released at once by a barrier; returns their results in
    order, re-raising the first exception."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def worker(i, job):
        try:
            barrier.wait(timeout=60)
            results[i] = job()
        except BaseException as e:  # noqa: BLE001  (reported below, with its thread)
            errors.append((i, e))

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0][1]
    return results


def _problem(i):
    """Inputs of job i: a few different shapes and options, so concurrent calls use different variants too."""
    g = torch.Generator().manual_seed(100 + i)
    L, S, Hq, Hk, E = [(13, 29, 4, 2, 32), (7, 1100, 8, 2, 32), (21, 21, 2, 2, 16)][i % 3]
    q, k, v = (torch.randn(2, h, n, E, generator=g) for h, n in ((Hq, L), (Hk, S), (Hk, S)))
    kw = [dict(is_causal=True), dict(window_size=(300, 0)), dict(attn_mask=torch.randn(2, 1, L, S, generator=g))][i % 3]
    grad = torch.randn(2, Hq, L, E, generator=g)
    return q, k, v, kw, grad


def _attention_job(i):
    """Forward and backward of problem i with mfa_torch's kernels (return_lse=True: never PyTorch's SDPA)."""
    q, k, v, kw, grad = _problem(i)

    def job():
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = mfa_torch.scaled_dot_product_attention(*leaves, enable_gqa=True, return_lse=True, **kw)
        return (out, lse) + torch.autograd.grad(out, leaves, grad)

    return job


def _check_against_oracle(i, result):
    q, k, v, kw, grad = _problem(i)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    okw = {"causal": "upper_left"} if kw.get("is_causal") else {"window": (300, 0)} if "window_size" in kw else \
        {"mask": kw["attn_mask"]}
    ref, ref_lse = attention_fp64(*leaves, **okw)
    ref_grads = torch.autograd.grad(ref, leaves, grad.double())
    for name, ours, want in zip(("out", "lse", "dq", "dk", "dv"), result, (ref, ref_lse) + ref_grads):
        assert_rule(f"job {i} {name}", ours, None, want, torch.float32)


@pytest.mark.parametrize("route", [pytest.param("emulator", marks=pytest.mark.emulator), "reference"])
def test_concurrent_attention_matches_sequential_calls_and_the_oracle(route):
    jobs = [_attention_job(i) for i in range(THREADS)]
    with mfa_torch.backend(route):
        assert route in mfa_torch.explain(*_problem(0)[:3], enable_gqa=True, return_lse=True)
        sequential = [job() for job in jobs]
        concurrent = _run_in_threads(jobs)
    for i, (one, other) in enumerate(zip(sequential, concurrent)):
        for a, b in zip(one, other):
            assert torch.equal(a, b), f"job {i}: a concurrent call differs from the sequential one"
        _check_against_oracle(i, other)


@pytest.mark.emulator
def test_concurrent_gemm_on_the_emulator():
    g = torch.Generator().manual_seed(7)
    operands = [(torch.randn(2, 37, 45, generator=g), torch.randn(45, 29 + i % 2, generator=g)) for i in range(THREADS)]
    with mfa_torch.backend("emulator"):
        results = _run_in_threads([lambda a=a, b=b: mfa_torch.matmul(a, b) for a, b in operands])
    for (a, b), c in zip(operands, results):
        assert_rule("c", c, None, matmul_fp64(a, b), torch.float32)


@pytest.fixture
def fresh_variant_cache(monkeypatch):
    """An empty in-process library cache and a zeroed compilation counter; the previous ones come back afterwards
    (the compiled libraries stay in the emulator's disk cache, so a second load is cheap)."""
    monkeypatch.setattr(emulator_executor, "_libraries", {})
    monkeypatch.setattr(emulator_executor, "compilations", 0)
    yield


@pytest.mark.emulator
def test_each_variant_is_compiled_once_under_concurrent_calls(fresh_variant_cache):
    """THREADS threads run the same forward and backward at the same moment, then different problems: the number of
    libraries compiled equals the number of distinct (shader, defines) variants the calls need, not more."""
    same = [_attention_job(0)] * THREADS
    with mfa_torch.backend("emulator"):
        _run_in_threads(same)
        variants_of_problem_0 = set(emulator_executor._libraries)
        assert emulator_executor.compilations == len(variants_of_problem_0)
        # delta, dQ and dK/dV of the backward, and the forward
        assert {key[0] for key in variants_of_problem_0} == {
            "attention_forward.metal", "attention_backward_delta.metal", "attention_backward_dq.metal",
            "attention_backward_dkdv.metal"}
        _run_in_threads([_attention_job(i) for i in range(THREADS)])
    assert emulator_executor.compilations == len(emulator_executor._libraries)
    assert len(emulator_executor._libraries) > len(variants_of_problem_0)  # the other problems needed more variants
    assert "attention_combine.metal" in {key[0] for key in emulator_executor._libraries}  # the split-KV decode job
