"""The attention ops on the Metal route: describe the canonical call for the C++ planner, allocate the outputs,
run the plan with the route's executor (MPS stream or emulator)."""
import torch

from .. import _C, block_masks
from . import executors

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM, MAX_VALUE_DIM = 576, 512  # shaders/attention_params.h


def metal_lacks(dtype, head_dim, value_dim):
    """What an attention call needs that the Metal kernels do not implement (empty: they take it)."""
    lacks = []
    if dtype not in _KERNEL_DTYPES:
        lacks.append(f"{dtype} (Apple GPUs have no float64)")
    if not 1 <= head_dim <= MAX_HEAD_DIM or not 1 <= value_dim <= MAX_VALUE_DIM:
        lacks.append(f"head dims outside E 1..{MAX_HEAD_DIM}, Ev 1..{MAX_VALUE_DIM} (got {head_dim} and {value_dim})")
    return lacks


def backward_lacks(q, v, mask, mask_grad):
    """What an attention backward needs that the Metal kernels do not implement (empty: they take it)."""
    lacks = metal_lacks(q.dtype, q.shape[3], v.shape[3])
    full = (q.shape[0], q.shape[1], q.shape[2], v.shape[2])
    if mask_grad and tuple(mask.shape) != full:
        lacks.append("the gradient of a mask broadcast over some dimension (the Metal kernels write one score "
                     "gradient per element and do not sum)")
    return lacks


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _problem(q, k, v, mask, alibi, cu_q, max_q, max_k, scale, left, right, bottom_right, softcap, dropout_p, seed,
             family):
    p = _C.AttentionProblem()
    p.dtype = _dtype_name(q.dtype)
    p.batch, p.q_heads, p.q_len, p.head_dim = q.shape
    p.kv_heads, p.kv_len, p.value_dim = k.shape[1], k.shape[2], v.shape[3]
    # q, k, v are read through their strides (_prepare made each last dim dense; a size-1 one's stride is never used)
    p.q_strides, p.k_strides, p.v_strides = ([*t.stride()[:3], 1] for t in (q, k, v))
    p.q_aligned, p.k_aligned, p.v_aligned = (executors.begins_on_16_bytes(t) for t in (q, k, v))
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
            window_left, window_right, bottom_right, softcap, dropout_p, dropout_seed, sinks=None, *, blocks=None,
            pages=None, num_splits=0, family=None, count_tiles=False, checks=None):
    """mfa::attention_forward on the Metal route (sinks: float32 (Hq,) or None; blocks: a CompactBlockMask or None;
    pages: a paged_kv.PagedKV or None; num_splits: key splits, 0 = the planner's choice). Debug keywords: family
    (block tables of that GPU family), count_tiles (also return the key/value tiles each threadgroup computed), checks
    (emulator checking mode)."""
    problem, tensors = _prepare(route, q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k, scale, window_left, window_right, bottom_right, softcap, dropout_p,
                                dropout_seed, family, count_tiles, blocks, pages)
    if sinks is not None:
        problem.has_sinks = True
        tensors["sinks"] = sinks.contiguous()
    problem.num_splits = num_splits
    plan = _C.plan_attention_forward(problem)
    B, Hq, L, _ = q.shape
    if cu_seqlens_q is None:
        tensors["out"] = out = q.new_empty(B, Hq, L, v.shape[3])
        tensors["stats"] = stats = torch.empty(B, Hq, L, 2, dtype=torch.float32, device=q.device)
    else:  # the kernels write the rows of the sequences only: tokens past cu_seqlens_q[-1] get 0 and no keys
        tensors["out"] = out = q.new_zeros(B, Hq, L, v.shape[3])
        tensors["stats"] = stats = torch.tensor([float("-inf"), 0.0], device=q.device).repeat(B, Hq, L, 1)
    temporaries = executors.run(route, plan, tensors, checks, problem.family)
    if count_tiles:  # a plan without launches (nothing to compute) computed no tiles
        return out, stats, _tile_count(temporaries, "tile_count")
    return out, stats


def backward(route, grad_out, q, k, v, out, stats, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
             max_seqlen_k, scale, window_left, window_right, bottom_right, softcap, dropout_p, dropout_seed, mask_grad,
             *, blocks=None, family=None, count_tiles=False, checks=None):
    """mfa::attention_backward on the Metal route (blocks and debug keywords as forward; count_tiles returns the dQ
    and dK/dV kernels' tile counts after the gradients). dmask only for masks with every dimension full
    (backward_lacks)."""
    problem, tensors = _prepare(route, q, k, v, mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k, scale, window_left, window_right, bottom_right, softcap, dropout_p,
                                dropout_seed, family, count_tiles, blocks)
    grad_out = grad_out.contiguous()
    problem.grad_out_aligned = executors.begins_on_16_bytes(grad_out)
    plan = _C.plan_attention_backward(problem, mask_grad)
    tensors.update(grad_out=grad_out, out=out.contiguous(), stats=stats.contiguous())
    dq, dk, dv = (torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    tensors.update(dq=dq, dk=dk, dv=dv)
    if blocks is not None:
        tensors["mask_q_lists"] = block_masks.query_lists(tensors["mask"])
    dmask = q.new_empty(0)
    if mask_grad:  # the kernel writes through the mask's strides: a contiguous full mask and its gradient
        tensors["mask"] = tensors["mask"].contiguous()
        tensors["dmask"] = dmask_float = torch.zeros(tensors["mask"].shape, dtype=torch.float32, device=q.device)
    temporaries = executors.run(route, plan, tensors, checks, problem.family)
    if mask_grad:
        dmask = dmask_float.to(mask.dtype)
    grads = dq, dk, dv, dmask
    if count_tiles:
        return grads + (_tile_count(temporaries, "tile_count_dq"), _tile_count(temporaries, "tile_count_dkdv"))
    return grads


def _tile_count(temporaries, name):
    return temporaries.get(name, torch.zeros(0, dtype=torch.int32))


def _prepare(route, q, k, v, mask, alibi, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right, softcap,
             dropout_p, seed, family, count_tiles, blocks=None, pages=None):
    """The problem for the planner and the input tensors by the names plans bind."""
    # The kernels read q, k, v in place through their strides (views of packed qkv tensors: no copy) as long as the
    # head dim is dense; only a view with a strided head dim is copied, here, for the forward and the backward.
    q, k, v = (t if t.shape[3] <= 1 or t.stride(3) == 1 else t.contiguous() for t in (q, k, v))
    if mask is not None and mask.dtype == torch.float64:
        mask = mask.float()  # same (broadcast) shape; the GPU has no float64
    problem = _problem(q, k, v, mask, alibi, cu_q, max_q, max_k, scale, left, right, bottom_right, softcap, dropout_p,
                       seed, family or executors.gpu_family(route))
    problem.count_tiles = count_tiles
    tensors = {"q": q, "k": k, "v": v}
    # The kernels index every other buffer as dense from its first element: a strided view (e.g. cu_seqlens[::2])
    # would be read as its underlying storage, so everything but q, k, v and the mask (read through their strides) is
    # made contiguous.
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
    optional = {"mask": mask, "alibi": contiguous(alibi), "cu_seqlens_q": contiguous(cu_q),
                "cu_seqlens_k": contiguous(cu_k)}
    tensors.update({name: t for name, t in optional.items() if t is not None})
    if blocks is not None:  # the block states stand in the mask's place, read through their (broadcast) strides
        states = blocks.states.contiguous()
        problem.mask = "blocks"
        problem.mask_strides = [0 if n == 1 else s for n, s in zip(states.shape, states.stride())]
        problem.mask_block_q, problem.mask_block_k = blocks.block_size
        tensors.update(mask=states, mask_bits=blocks.bits.contiguous())
    if pages is not None:  # k and v are page pools
        problem.paged, problem.pages, problem.max_pages = True, k.shape[0], pages.block_table.shape[1]
        problem.max_seqlen_k = max_k
        tensors.update(block_table=pages.block_table.contiguous(), kv_spans=pages.kv_spans.contiguous())
    return problem, tensors
