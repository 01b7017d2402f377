"""The doctor's correctness sweep: attention forward and backward (masks, causal, GQA, a sliding window; dropout off)
and GEMM on mfa_torch's Metal kernels, each compared with float64 by the test suite's rule: the kernels' error may
be at most twice PyTorch's own (the reference route in the same dtype on the same device) plus a small epsilon."""
import dataclasses
import typing

import torch

import mfa_torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUICK_DTYPES = (torch.float16,)
# Epsilon per dtype, relative to the largest float64 value: about one ulp at that magnitude for the 16-bit types
# (a final rounding that goes the other way from PyTorch's must not fail), room for another summation order in fp32.
EPS_REL = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
EPS_ABS = {torch.float32: 1e-7, torch.float16: 1e-5, torch.bfloat16: 1e-4}
# Odd sizes: no block size divides them, L != S, a head dim that is not a power of two.
BATCH, Q_LEN, KV_LEN, HEAD_DIM = 2, 19, 33, 40


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    inputs: typing.Callable  # torch.Generator -> {name: float64 (or bool) CPU tensor}
    call: typing.Callable  # (**inputs) -> output, through mfa_torch's public API
    differentiated: tuple  # the inputs whose gradients are compared


def _randn(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _qkv(q_heads=2, kv_heads=2, flash_layout=False):
    def make(g):
        shapes = ((BATCH, q_heads, Q_LEN, HEAD_DIM), (BATCH, kv_heads, KV_LEN, HEAD_DIM))
        q, k, v = _randn(g, *shapes[0]), _randn(g, *shapes[1]), _randn(g, *shapes[1])
        return {n: t.transpose(1, 2) if flash_layout else t for n, t in (("q", q), ("k", k), ("v", v))}
    return make


def _with_mask(boolean):
    def make(g):
        tensors = _qkv()(g)
        if boolean:  # about a third of the keys masked; key 0 stays allowed, so no row is fully masked
            mask = torch.rand(BATCH, 1, Q_LEN, KV_LEN, generator=g) > 0.3
            mask[..., 0] = True
        else:
            mask = _randn(g, BATCH, 1, Q_LEN, KV_LEN)
        return {**tensors, "attn_mask": mask}
    return make


def _gemm_inputs(g):
    return {"a": _randn(g, 3, 21, 70), "b": _randn(g, 1, 70, 45)}


def _linear_inputs(g):
    return {"x": _randn(g, 2, 13, 70), "weight": _randn(g, 45, 70), "bias": _randn(g, 45)}


def _sdpa(**options):
    return lambda q, k, v, attn_mask=None: mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask, **options)


QKV = ("q", "k", "v")
ATTENTION = (
    Case("attention", _qkv(), _sdpa(), QKV),
    Case("attention causal", _qkv(), _sdpa(is_causal=True), QKV),
    Case("attention bool mask", _with_mask(True), _sdpa(), QKV),
    Case("attention additive mask", _with_mask(False), _sdpa(), QKV),
    Case("attention GQA 4:2", _qkv(q_heads=4), _sdpa(enable_gqa=True), QKV),
    Case("flash_attn_func causal window (8, 0)", _qkv(flash_layout=True),
         lambda q, k, v: mfa_torch.flash_attn_func(q, k, v, causal=True, window_size=(8, 0)), QKV),
)
GEMM = (
    Case("matmul (batch-broadcast b)", _gemm_inputs, lambda a, b: mfa_torch.matmul(a, b), ("a", "b")),
    Case("linear with bias", _linear_inputs, lambda x, weight, bias: mfa_torch.linear(x, weight, bias),
         ("x", "weight", "bias")),
)


def _evaluate(case, tensors, backend, dtype, device, seed):
    """The output and the gradients of `case` under `backend`, in `dtype` on `device`, as float64 CPU tensors; the
    output's gradient is the same random tensor for every call with one seed."""
    moved = {n: t.to(device, dtype if t.is_floating_point() else t.dtype, copy=True) for n, t in tensors.items()}
    for n in case.differentiated:
        moved[n].requires_grad_()
    with mfa_torch.backend(backend):
        out = case.call(**moved)
        grad_out = _randn(torch.Generator().manual_seed(seed), *out.shape).to(device, dtype)
        grads = torch.autograd.grad(out, [moved[n] for n in case.differentiated], grad_out)
    return [r.detach().cpu().double() for r in (out, *grads)]


def _max_error(x, reference):
    return (x - reference).abs().max().item()


def compare(case, dtype, route, seed=0):
    """Raises AssertionError naming each result (output, gradients) that misses the rule on `route` ("metal": MPS
    tensors, "emulator": CPU tensors)."""
    device = torch.device("mps" if route == "metal" else "cpu")
    tensors = case.inputs(torch.Generator().manual_seed(seed))
    grad_seed = seed + 1  # not the inputs' stream
    oracle = _evaluate(case, tensors, "reference", torch.float64, torch.device("cpu"), grad_seed)
    baseline = _evaluate(case, tensors, "reference", dtype, device, grad_seed)
    ours = _evaluate(case, tensors, route, dtype, device, grad_seed)
    names = ["output"] + [f"grad {n}" for n in case.differentiated]
    problems = []
    for name, mine, theirs, reference in zip(names, ours, baseline, oracle):
        eps = EPS_REL[dtype] * reference.abs().max().item() + EPS_ABS[dtype]
        error, yardstick = _max_error(mine, reference), _max_error(theirs, reference)
        if not error <= 2 * yardstick + eps:  # also NaN
            problems.append(f"{name}: max error {error:.3g} against float64, allowed 2 x {yardstick:.3g} (the "
                            f"reference route's) + {eps:.3g}")
    if problems:
        raise AssertionError("; ".join(problems))


def cases(quick):
    """(check name, case, dtype) of the sweep; quick: float16 only."""
    dtypes = QUICK_DTYPES if quick else DTYPES
    return [(f"{case.name} {str(dtype).removeprefix('torch.')} forward+backward", case, dtype)
            for dtype in dtypes for case in ATTENTION + GEMM]
