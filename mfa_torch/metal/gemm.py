"""mfa::gemm on the Metal route: describe the call (sizes and element strides, so transposed and batch-broadcast
operands are read in place) for the C++ planner, allocate the output, run the plan with the route's executor."""
import torch

from .. import _C
from . import executors

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def metal_lacks(dtype):
    """What a GEMM in `dtype` needs that the Metal kernels do not implement (empty: they take it)."""
    return [] if dtype in _KERNEL_DTYPES else [f"{dtype} (Apple GPUs have no float64)"]


def _strides(t):
    """Element strides over (batch, rows, cols); a batch of 1 is broadcast over the output's batch (stride 0)."""
    batch_stride, row_stride, col_stride = t.stride()
    return [0 if t.shape[0] == 1 else batch_stride, row_stride, col_stride]


def gemm(route, a, b, bias, *, c=None, family=None, checks=None):
    """a (1 or B, M, K) x b (1 or B, K, N) (+ bias (N,)) -> (B, M, N) in a's dtype. With `c` (contiguous (B, M, N)),
    the product is added to c in place and c is returned. Debug keywords: family (block tables of that GPU family),
    checks (emulator checking mode)."""
    problem = _C.GemmProblem()
    problem.dtype = str(a.dtype).removeprefix("torch.")
    problem.batch = a.shape[0] if b.shape[0] == 1 else b.shape[0]  # torch's broadcast: 1 with 0 gives 0
    problem.m, problem.k = a.shape[1], a.shape[2]
    problem.n = b.shape[2]
    problem.a_strides, problem.b_strides = _strides(a), _strides(b)
    problem.has_bias = bias is not None
    problem.accumulate = c is not None
    problem.family = family or executors.gpu_family(route)
    if c is None:
        c = a.new_empty(problem.batch, problem.m, problem.n)
    elif not c.is_contiguous() or c.shape != (problem.batch, problem.m, problem.n):
        raise ValueError(f"c must be contiguous with shape {(problem.batch, problem.m, problem.n)}, got "
                         f"{tuple(c.shape)} with strides {c.stride()}")
    tensors = {"a": a, "b": b, "c": c}
    if bias is not None:
        tensors["bias"] = bias.contiguous()
    for name, t in tensors.items():
        setattr(problem, f"{name}_aligned", executors.begins_on_16_bytes(t))
    plan = _C.plan_gemm(problem)
    executors.run(route, plan, tensors, checks, problem.family)
    return c
