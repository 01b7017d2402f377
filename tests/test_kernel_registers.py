"""Registers per thread of the attention kernels (issue "Kernels built for speed": no variant the planners emit for
any head dims (E <= 576, Ev <= 512), forward or backward, any dtype or family, over 128). The planners estimate each
variant's registers (csrc/attention/registers.h) to choose which operands stay in registers and how many column
slices an accumulator is cut into; every plan is checked against the limit here, and the estimate against the
emulator's exact count on a variant of every kind: all held, operands streamed, accumulators sliced, 16-bit, float
and widened bfloat tiles."""
import pytest
import torch

from mfa_torch import _C
from mfa_torch.emulator import profile
from mfa_torch.metal import variants
from kernel_routes import kernel_route, recorded_plans
from sdpa_check import sdpa_check

LIMIT = 128
ESTIMATED = ("attention_forward", "attention_backward_dq", "attention_backward_dkdv")


def test_no_planned_variant_passes_the_register_limit():
    for family in ("apple7", "apple8", "apple9", "apple10"):
        for dtype in ("float32", "float16", "bfloat16"):
            for E in range(8, 577, 8):  # the kernels' head dims (E and Ev padded to 8)
                for Ev in range(8, 513, 8):
                    problem = variants.attention_problem(family, dtype, "none", head_dim=E, value_dim=Ev)
                    for plan in variants.attention_plans(problem):
                        for launch in plan.launches:
                            if launch.kernel in ESTIMATED:
                                assert 0 < launch.registers <= LIMIT, (family, dtype, E, Ev, launch.kernel)


def test_dk_and_dv_slice_only_past_the_limit():
    def dkdv_slices(E, Ev, dtype):
        problem = variants.attention_problem("apple9", dtype, "none", head_dim=E, value_dim=Ev)
        backward = _C.plan_attention_backward(problem, False)
        (slices,) = [dict(l.defines)["MFA_SLICES"] for l in backward.launches if l.kernel.endswith("dkdv")]
        return int(slices)
    assert dkdv_slices(128, 128, "float16") == 1  # both accumulators whole with K and V held
    assert dkdv_slices(128, 128, "float32") == 1  # K streamed
    assert dkdv_slices(192, 192, "float16") == 1  # both streamed: 24 + 96 + a score tile and a dP tile 4 + 2 = 126
    assert dkdv_slices(200, 200, "float16") == 2
    assert dkdv_slices(512, 512, "float16") == 4


CASES = [  # (family, dtype, E, Ev): what each variant exercises
    ("apple9", torch.float16, 256, 256),  # 16-bit: Q streamed (forward, dQ), dO held; dK and dV in 2 slices
    ("apple7", torch.bfloat16, 256, 256),  # widened bfloat: the same, held tiles widened at each use
    ("apple7", torch.float32, 128, 128),  # float tiles, everything held but K in dK/dV
    ("apple9", torch.float32, 8, 256),  # float tiles, V streamed in dK/dV
    ("apple9", torch.float16, 576, 512),  # O, dQ, dK and dV in column slices, every operand streamed
    ("apple7", torch.bfloat16, 128, 512),  # O in 2 slices sharing P, each holding alternate tiles of Q (widened)
    ("apple7", torch.float32, 576, 512),  # float tiles sliced, dQ (dK/dV) staging K and V (Q and dO) in chunks
]


@pytest.mark.emulator
@pytest.mark.parametrize("family, dtype, E, Ev", CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_estimates_are_the_emulators_count(monkeypatch, family, dtype, E, Ev):
    """Forward and backward through the API (checked against the fp64 oracle as well): the emulator's register count
    of each launch equals the planner's estimate, and no launch (also delta and combine) passes the limit."""
    monkeypatch.setenv("MFA_TORCH_GPU_FAMILY", family)
    plans = recorded_plans(monkeypatch)
    with kernel_route("emulator") as device, profile() as prof:
        sdpa_check({"q": (1, 2, 13, E), "k": (1, 2, 21, E), "v": (1, 2, 21, Ev)}, dtype, device=device)
    planned = [launch for plan in plans for launch in plan.launches]
    assert [launch.kernel for launch in planned] == [launch["kernel"] for launch in prof.launches]
    for launch, counted in zip(planned, prof.launches):
        assert counted["registers"] <= LIMIT and not counted["spills"], launch.kernel
        if launch.kernel in ESTIMATED:
            assert launch.registers == counted["registers"], (launch.kernel, dict(launch.defines))
