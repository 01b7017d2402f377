"""The attention ops on the Metal route: describe the canonical call for the C++ planner, allocate the outputs,
run the plan with the route's executor (MPS stream or emulator)."""
import torch

from .. import _C
from . import executors

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


def metal_lacks(dtype, head_dim, value_dim):
    """What an attention call needs that the Metal kernels do not implement (empty: they take it)."""
    lacks = []
    if dtype not in _KERNEL_DTYPES:
        lacks.append(f"{dtype} (Apple GPUs have no float64)")
    if not 1 <= head_dim <= MAX_HEAD_DIM or not 1 <= value_dim <= MAX_HEAD_DIM:
        lacks.append(f"head dims outside 1..{MAX_HEAD_DIM} (got {head_dim} and {value_dim})")
    return lacks


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _problem(q, k, v, mask, alibi, cu_q, max_q, max_k, scale, left, right, bottom_right, softcap, dropout_p, seed,
             family):
    p = _C.AttentionProblem()
    p.dtype = _dtype_name(q.dtype)
    p.batch, p.q_heads, p.q_len, p.head_dim = q.shape
    p.kv_heads, p.kv_len, p.value_dim = k.shape[1], k.shape[2], v.shape[3]
    if mask is not None:
        p.mask = "bool" if mask.dtype == torch.bool else _dtype_name(mask.dtype)
        p.mask_strides = [0 if n == 1 else s for n, s in zip(mask.shape, mask.stride())]
    if alibi is not None:
        p.has_alibi = True
        p.alibi_batch_stride = 0 if alibi.shape[0] == 1 else alibi.shape[1]
    if cu_q is not None:
        p.num_sequences = cu_q.shape[0] - 1
        p.max_seqlen_q, p.max_seqlen_k = max_q, max_k
    p.scale, p.window_left, p.window_right, p.bottom_right, p.softcap = scale, left, right, bottom_right, softcap
    if dropout_p > 0:
        p.dropout_p = dropout_p
        p.dropout_seed, p.dropout_offset = (int(x) for x in seed.tolist())
    p.family = family
    return p


def forward(route, q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
            window_left, window_right, bottom_right, softcap, dropout_p, dropout_seed, *, family=None,
            count_tiles=False, checks=None):
    """mfa::attention_forward on the Metal route. Debug keywords: family (block tables of that GPU family),
    count_tiles (also return the key/value tiles each threadgroup computed), checks (emulator checking mode)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if mask is not None and mask.dtype == torch.float64:
        mask = mask.float()  # same (broadcast) shape; the GPU has no float64
    problem = _problem(q, k, v, mask, alibi_slopes, cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale, window_left,
                       window_right, bottom_right, softcap, dropout_p, dropout_seed,
                       family or executors.gpu_family(route))
    problem.count_tiles = count_tiles
    plan = _C.plan_attention_forward(problem)
    B, Hq, L, _ = q.shape
    out = q.new_empty(B, Hq, L, v.shape[3])
    lse = torch.empty(B, Hq, L, dtype=torch.float32, device=q.device)
    tensors = {"q": q, "k": k, "v": v, "out": out, "lse": lse}
    optional = {"mask": mask, "alibi": None if alibi_slopes is None else alibi_slopes.contiguous(),
                "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k}
    tensors.update({name: t for name, t in optional.items() if t is not None})
    temporaries = executors.run(route, plan, tensors, checks)
    if count_tiles:  # a plan without launches (nothing to compute) computed no tiles
        return out, lse, temporaries.get("tile_count", torch.zeros(0, dtype=torch.int32))
    return out, lse
