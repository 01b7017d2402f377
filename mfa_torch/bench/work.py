"""Work counts under the emulator: key/value tiles the Metal kernels computed (their debug counter) against the
minimum the causal structure allows and against dense (every tile), for the forward and both backward kernels.
The emulator runs every GPU thread on CPU cores: it measures work, not speed."""
import torch

from .. import _C
from ..metal import attention as metal_attention
from ..metal import executors
from . import formulas
from .progress import progress

WORK_COLUMNS = ("kernel", "dtype", "B", "Hq", "Hk", "L", "S", "D", "causal", "block", "tiles_computed",
                "tiles_minimum", "tiles_dense", "at_minimum", "computed_over_dense")
ROUTE = "emulator"


def _problem(case):
    """The planner's description of the benchmarked call, built here from the case (independently of the op layer)
    to read the block sizes the plans choose."""
    p = _C.AttentionProblem()
    p.dtype = case.dtype_name
    p.batch, p.q_heads, p.q_len, p.head_dim = case.B, case.Hq, case.L, case.D
    p.kv_heads, p.kv_len, p.value_dim = case.Hk, case.S, case.D
    p.scale, p.window_left, p.window_right, p.bottom_right = case.D ** -0.5, -1, 0 if case.causal else -1, False
    p.family = executors.gpu_family(ROUTE)
    p.count_tiles = True
    return p


def _blocks(plan, kernel, names):
    launch = next(launch for launch in plan.launches if launch.kernel == kernel)
    defines = dict(launch.defines)
    return tuple(int(defines[n]) for n in names)


def _counts(copies, last_queries, case, block_k):
    """(minimum, dense) tiles of `copies` independent (batch, head) slices."""
    return (copies * formulas.minimum_tiles(last_queries, case.S, block_k, case.causal),
            copies * formulas.dense_tiles(last_queries, case.S, block_k))


def expected_tiles(case):
    """{kernel: (block label, minimum tiles, dense tiles)} from the block sizes the plans chose. The forward and dQ
    kernels tile GQA-packed rows (query heads of a group share a threadgroup) x key blocks per (batch, K/V head);
    the dK/dV kernel tiles key blocks x query blocks per (batch, query head)."""
    problem = _problem(case)
    forward, backward = _C.plan_attention_forward(problem), _C.plan_attention_backward(problem, False)
    result = {}
    for kernel, plan in (("attention_forward", forward), ("attention_backward_dq", backward)):
        block_q, block_k = _blocks(plan, kernel, ("MFA_BLOCK_Q", "MFA_BLOCK_K"))
        last = formulas.row_block_last_queries(case.L, case.group, block_q)
        result[kernel] = (f"{block_q}x{block_k}", *_counts(case.B * case.Hk, last, case, block_k))
    block_kv, block_q = _blocks(backward, "attention_backward_dkdv", ("MFA_BLOCK_KV", "MFA_BLOCK_Q"))
    last = formulas.row_block_last_queries(case.L, 1, block_q)
    result["attention_backward_dkdv"] = (f"{block_kv}x{block_q}", *_counts(case.B * case.Hq, last, case, block_kv))
    return result


def computed_tiles(case):
    """{kernel: tiles computed} from the kernels' counters, running forward and backward under the emulator."""
    q = torch.randn(case.B, case.Hq, case.L, case.D, dtype=case.dtype)
    k, v = (torch.randn(case.B, case.Hk, case.S, case.D, dtype=case.dtype) for _ in range(2))
    args = (None, None, None, None, case.L, case.S, case.D ** -0.5, -1, 0 if case.causal else -1, False, 0.0, 0.0,
            None)
    out, stats, forward = metal_attention.forward(ROUTE, q, k, v, *args, count_tiles=True)
    *_, dq, dkdv = metal_attention.backward(ROUTE, torch.randn_like(out), q, k, v, out, stats, *args, False,
                                            count_tiles=True)
    return {"attention_forward": int(forward.sum()), "attention_backward_dq": int(dq.sum()),
            "attention_backward_dkdv": int(dkdv.sum())}


def work_rows_of(case):
    computed, expected = computed_tiles(case), expected_tiles(case)
    rows = []
    for kernel, (block, minimum, dense) in expected.items():
        rows.append({"kernel": kernel, "dtype": case.dtype_name, "B": case.B, "Hq": case.Hq, "Hk": case.Hk,
                     "L": case.L, "S": case.S, "D": case.D, "causal": case.causal, "block": block,
                     "tiles_computed": computed[kernel], "tiles_minimum": minimum, "tiles_dense": dense,
                     "at_minimum": computed[kernel] == minimum, "computed_over_dense": computed[kernel] / dense})
    return rows


def work_rows(cases):
    return [row for case in progress(cases, "emulator work", lambda c: c.label()) for row in work_rows_of(case)]
