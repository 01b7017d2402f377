"""The work targets the Metal kernels are built to (issue "Kernels built for speed"), asserted on the emulator's exact
counters (emulator.profile()) so that a later change cannot silently move a kernel away from them. Shapes: 16-bit
inputs (fp16 and bf16), E = Ev = 64 and 128, L = S = 256, heads few enough that the planners do not split the keys,
planned for the Apple7 and Apple9 tables."""
import pytest
import torch

from kernel_routes import with_dtypes
from mfa_torch.emulator import profile
from mfa_torch.metal import attention as metal_attention

pytestmark = pytest.mark.emulator
ROUTE = "emulator"
B, H, L = 1, 2, 256
# Each dtype on both tables and at both head dims; MFA_TORCH_FULL_MATRIX=1 runs every combination.
CASES = [pytest.param(dtype, dim, family, id=f"{str(dtype)[6:]}-D{dim}-{family}")
         for (dim, family), dtype in with_dtypes([(64, "apple7"), (128, "apple7"), (128, "apple9"), (64, "apple9")],
                                                 (torch.float16, torch.bfloat16))]


def _inputs(dtype, dim):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, dim, generator=gen).to(dtype) for _ in range(3))
    return q, k, v, (None, None, None, None, L, L, dim ** -0.5, -1, -1, False, 0.0, 0.0, None)


@pytest.mark.parametrize("dtype, dim, family", CASES)
def test_forward_work_targets(dtype, dim, family):
    q, k, v, args = _inputs(dtype, dim)
    with profile() as prof:
        metal_attention.forward(ROUTE, q, k, v, *args, family=family)
    (launch,) = prof.launches  # one launch: the keys were not split
    threadgroups = launch["threadgroups"][0] * launch["threadgroups"][1] * launch["threadgroups"][2]
    assert launch["threadgroup_bytes"] <= 160 * launch["mma"]  # MFA's level
    assert launch["device_bytes"] >= 8 * launch["device_accesses"]  # vector loads, not scalar
    assert launch["barriers"] <= 2 * threadgroups * (L // 32)  # at most 2 per 32 keys per threadgroup
    assert launch["transcendentals"] <= 1.1 * B * H * L * L  # no mask, ALiBi, softcap, dropout or window
    assert not launch["spills"]


@pytest.mark.parametrize("dtype, dim, family", CASES)
def test_backward_work_targets(dtype, dim, family):
    q, k, v, args = _inputs(dtype, dim)
    out, stats = metal_attention.forward(ROUTE, q, k, v, *args, family=family)
    with profile() as prof:
        metal_attention.backward(ROUTE, torch.randn_like(out), q, k, v, out, stats, *args, False, family=family)
    kernels = [launch for launch in prof.launches if launch["kernel"] in ("attention_backward_dq",
                                                                          "attention_backward_dkdv")]
    assert len(kernels) == 2
    total = {key: sum(launch[key] for launch in kernels)
             for key in ("threadgroup_bytes", "mma", "device_bytes", "device_accesses", "transcendentals")}
    assert total["threadgroup_bytes"] <= 200 * total["mma"]
    assert total["device_bytes"] >= 8 * total["device_accesses"]
    assert total["transcendentals"] <= 2.1 * B * H * L * L  # P recomputed once per kernel
