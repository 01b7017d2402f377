"""mfa::kv_cache_append and mfa::rotary_embedding on the Metal route: describe the call (sizes and element strides, so
paged caches, transposed caches and views of packed tokens are read and written in place) for the C++ planner
(csrc/kv_cache/plan.cpp), allocate the output, run the plan with the route's executor. The ops' arguments have been
checked (mfa_torch/cache_ops.py) before they get here."""
import torch

from .. import _C
from . import executors

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def metal_lacks(*dtypes):
    """What a call with tensors of `dtypes` needs that the Metal kernels do not implement (empty: they take it)."""
    return [f"{dtype} (Apple GPUs have no float64)" for dtype in dict.fromkeys(dtypes)
            if dtype is not None and dtype not in _KERNEL_DTYPES]


def _name(dtype):
    return str(dtype).removeprefix("torch.")


def _rotary(cos, sin, interleaved):
    tables = _C.RotaryTables()
    if cos is not None:
        tables.dtype = _name(cos.dtype)
        tables.rotary_dim = 2 * cos.shape[1]
        tables.length = cos.shape[0]
        tables.cos_strides, tables.sin_strides = list(cos.stride()), list(sin.stride())
    tables.interleaved = interleaved
    return tables


def _leading_strides(t):
    """Element strides over the first three dims (the last one is dense)."""
    return list(t.stride()[:3])


def kv_cache_append(route, k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin, interleaved, *,
                    family=None, checks=None):
    """Writes k (rotated) and v into the caches in place. Debug keywords: family (the GPU family recorded in
    profiles), checks (emulator checking mode)."""
    problem = _C.KvCacheAppendProblem()
    problem.dtype = _name(k_cache.dtype)
    problem.batch, problem.kv_heads, problem.new_len, problem.head_dim = k.shape
    problem.value_dim = v.shape[3]
    problem.pages, _, problem.page_size, _ = k_cache.shape
    problem.max_pages = block_table.shape[1]
    problem.k_cache_strides, problem.v_cache_strides = _leading_strides(k_cache), _leading_strides(v_cache)
    problem.k_strides, problem.v_strides = _leading_strides(k), _leading_strides(v)
    problem.block_table_strides = list(block_table.stride())
    problem.positions_stride = positions.stride(0)
    problem.rotary = _rotary(rotary_cos, rotary_sin, interleaved)
    plan = _C.plan_kv_cache_append(problem)
    tensors = {"k_cache": k_cache, "v_cache": v_cache, "k": k, "v": v, "block_table": block_table,
               "positions": positions}
    if rotary_cos is not None:
        tensors.update(rotary_cos=rotary_cos, rotary_sin=rotary_sin)
    if plan.launches:
        executors.run(route, plan, tensors, checks, family or executors.gpu_family(route))


def rotary_embedding(route, x, positions, rotary_cos, rotary_sin, interleaved, same_position, *, family=None,
                     checks=None):
    """x (B, H, L, D) -> a new contiguous (B, H, L, D) tensor, rotated. Debug keywords as for kv_cache_append."""
    problem = _C.RotaryEmbeddingProblem()
    problem.dtype = _name(x.dtype)
    problem.batch, problem.heads, problem.seq_len, problem.head_dim = x.shape
    problem.x_strides = _leading_strides(x)
    problem.positions_stride = positions.stride(0)
    problem.same_position = same_position
    problem.rotary = _rotary(rotary_cos, rotary_sin, interleaved)
    plan = _C.plan_rotary_embedding(problem)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if plan.launches:
        executors.run(route, plan, {"x": x, "out": out, "positions": positions, "rotary_cos": rotary_cos,
                                    "rotary_sin": rotary_sin}, checks, family or executors.gpu_family(route))
    return out
