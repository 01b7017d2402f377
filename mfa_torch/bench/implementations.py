"""The implementations compared side by side: mfa_torch, PyTorch's own path and MLX (when installed).

Each case becomes a `Call`: a function doing one call (forward, or forward and backward) on inputs made once, and
the framework that knows how to wait for it and how much memory it took.
"""
import dataclasses

import torch
import torch.nn.functional as F

import mfa_torch
from .. import routing
from ..metal import gemm as metal_gemm
from . import cpu_memory, environment

MPS_ARRAY_LIMIT = 2**32  # bytes: PyTorch's MPS SDPA aborts on one array past this (pytorch#149261)


class TorchFramework:
    """mfa_torch and PyTorch: calls are queued on the device; memory from the MPS allocator's statistics."""

    def __init__(self, dev):
        self.device = dev

    def run(self, fn, n):
        """n calls back to back, then one wait for all of them."""
        for _ in range(n):
            fn()
        environment.synchronize(self.device)

    def extra_memory(self, fn):
        """Runs one call; returns the bytes the MPS driver allocated for it beyond what was allocated before (MPS's
        caching allocator keeps freed blocks until empty_cache, so this is the call's peak, in whole heaps); on a
        CPU the resident memory a second call added at its peak (cpu_memory.py; None where that cannot be read): the
        first may compile (flex_attention) or fill caches, which is not the call's own memory."""
        if self.device.type == "cpu":
            self.run(fn, 1)
            return cpu_memory.extra_memory(lambda: self.run(fn, 1))
        if self.device.type != "mps":
            self.run(fn, 1)
            return None
        environment.synchronize(self.device)
        torch.mps.empty_cache()
        before = torch.mps.driver_allocated_memory()
        self.run(fn, 1)
        return torch.mps.driver_allocated_memory() - before


class MlxFramework:
    """MLX: calls are lazy; mx.eval computes them and blocks until done; memory from MLX's peak statistics."""

    def __init__(self, mx):
        self.mx = mx

    def _memory_function(self, name):  # newer MLX has them at the top level, older under mx.metal
        return getattr(self.mx, name, None) or getattr(self.mx.metal, name)

    def run(self, fn, n):
        self.mx.eval([fn() for _ in range(n)])

    def extra_memory(self, fn):
        """Runs one call; returns MLX's peak active memory during it minus the memory active before."""
        self._memory_function("reset_peak_memory")()
        before = self._memory_function("get_active_memory")()
        self.run(fn, 1)
        return self._memory_function("get_peak_memory")() - before


@dataclasses.dataclass(frozen=True)
class Call:
    """One benchmarked call (fn, no arguments) and the framework that waits for it and reads its memory."""
    framework: object
    fn: object


def available():
    """Implementation names to compare: MLX only when it is installed."""
    return ("mfa_torch", "torch") + (("mlx",) if environment.mlx_core() else ())


# --- attention ------------------------------------------------------------------------------------------------

def mfa_torch_attention(q, k, v, causal, gqa):
    # return_lse=True asks for something PyTorch's SDPA does not return, so off the GPU the call runs mfa_torch's
    # own (reference) kernels instead of being handed to PyTorch's SDPA; on MPS it takes the Metal kernels anyway.
    return mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa, return_lse=True)[0]


def torch_attention(q, k, v, causal, gqa):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def attention_route(case, dev):
    """The route mfa_torch.explain reports for the benchmarked call, and its explanation."""
    one = torch.empty((), dtype=case.dtype, device=dev)  # expanded views: explain needs shapes, not memory
    q, kv = one.expand(case.B, case.Hq, case.L, case.D), one.expand(case.B, case.Hk, case.S, case.D)
    text = mfa_torch.explain(q, kv, kv, is_causal=case.causal, enable_gqa=case.Hq != case.Hk, return_lse=True)
    return text.removeprefix("route: ").split(" ", 1)[0], text


def _torch_attention_call(impl, case, backward, dev):
    f = mfa_torch_attention if impl == "mfa_torch" else torch_attention
    shape_q, shape_kv = (case.B, case.Hq, case.L, case.D), (case.B, case.Hk, case.S, case.D)
    q, k, v = (torch.randn(s, dtype=case.dtype, device=dev, requires_grad=backward)
               for s in (shape_q, shape_kv, shape_kv))
    gqa = case.Hq != case.Hk
    if backward:
        grad = torch.randn(shape_q, dtype=case.dtype, device=dev)
        fn = lambda: torch.autograd.grad(f(q, k, v, case.causal, gqa), (q, k, v), grad)  # noqa: E731
    else:
        fn = lambda: f(q, k, v, case.causal, gqa)  # noqa: E731
    return Call(TorchFramework(dev), fn)


def _mlx_attention_call(case, backward):
    mx = environment.mlx_core()
    dtype = getattr(mx, case.dtype_name)
    q, k, v = (mx.random.normal(s).astype(dtype)
               for s in ((case.B, case.Hq, case.L, case.D), (case.B, case.Hk, case.S, case.D),
                         (case.B, case.Hk, case.S, case.D)))
    mask = "causal" if case.causal else None

    def f(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=case.D ** -0.5, mask=mask)

    if backward:
        grad = mx.random.normal(q.shape).astype(dtype)
        fn = lambda: mx.vjp(f, [q, k, v], [grad])  # noqa: E731
    else:
        fn = lambda: f(q, k, v)  # noqa: E731
    mx.eval(q, k, v)
    return Call(MlxFramework(mx), fn)


def attention_call(impl, case, backward, dev):
    if impl == "mlx":
        return _mlx_attention_call(case, backward)
    return _torch_attention_call(impl, case, backward, dev)


def _may_materialise_scores(impl, case, backward, dev):
    """Whether an implementation may build the L x S score matrix: PyTorch's MPS SDPA has no fused backward
    (pytorch#179294) and materialises in the forward too; MLX's backward is unfused, and its fused forward
    covers head dims up to 128 in older versions."""
    if impl == "torch":
        return dev.type == "mps"
    if impl == "mlx":
        return backward or case.D > 128
    return False


def attention_skip_reason(impl, case, backward, dev, budget):
    """Why a case is not run for `impl` (it would not fit), or None. An estimate, so a Mac is never pushed into
    swapping or an abort: inputs, outputs and gradients, plus fp32 scores for implementations that may build them."""
    elem = torch.finfo(case.dtype).bits // 8
    tensors = case.B * (case.Hq * case.L + 2 * case.Hk * case.S) * case.D + case.B * case.Hq * case.L * case.D
    needed = elem * tensors * (2 if backward else 1)
    scores = 4 * case.B * case.Hq * case.L * case.S
    if _may_materialise_scores(impl, case, backward, dev):
        if impl == "torch" and scores > MPS_ARRAY_LIMIT:
            return (f"skipped: PyTorch's MPS SDPA builds a {scores / 2**30:.0f} GiB score array; arrays over 4 GiB "
                    "abort (pytorch#149261)")
        needed += scores * (3 if backward else 1)
    if needed > budget:
        return f"skipped: needs ~{needed / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB budget"
    return None


# --- GEMM -----------------------------------------------------------------------------------------------------

def gemm_route(case, dev):
    """The route mfa_torch.matmul takes: the Metal kernels ("metal"/"emulator") or the reference route."""
    return routing.kernel_route(dev, metal_gemm.metal_lacks(case.dtype)) or "reference"


def gemm_call(impl, case, dev):
    n = case.size
    if impl == "mlx":
        mx = environment.mlx_core()
        a, b = (mx.random.normal((n, n)).astype(getattr(mx, case.dtype_name)) for _ in range(2))
        mx.eval(a, b)
        return Call(MlxFramework(mx), lambda: mx.matmul(a, b))
    a, b = (torch.randn(n, n, dtype=case.dtype, device=dev) for _ in range(2))
    f = mfa_torch.matmul if impl == "mfa_torch" else torch.matmul
    return Call(TorchFramework(dev), lambda: f(a, b))


def gemm_skip_reason(case, budget):
    needed = 3 * case.size * case.size * torch.finfo(case.dtype).bits // 8
    if needed > budget:
        return f"skipped: needs ~{needed / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB budget"
    return None


def device_name(impl, dev):
    """Where an implementation runs: the torch device, or MLX's default device."""
    return f"mlx {environment.mlx_core().default_device()}" if impl == "mlx" else str(dev)
