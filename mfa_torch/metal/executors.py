"""Runs a launch plan with the executor of a route: "metal" (PyTorch's MPS stream) or "emulator" (CPU)."""
import torch


def run(route, plan, tensors, checks=None, family=None):
    """tensors: {name: tensor} for every name the plan binds except its temporaries, which are allocated here on the
    tensors' device and returned ({name: tensor}) for debug callers. checks: emulator checking mode; family: the GPU
    family the plan is for (emulator profiles record it)."""
    device = next(iter(tensors.values())).device
    temporaries = {t.name: torch.empty(t.numel, dtype=getattr(torch, t.dtype), device=device)
                   for t in plan.temporaries}
    table = {**tensors, **temporaries}
    if route == "metal":
        from . import mps_executor
        mps_executor.run_plan(plan, table)
    elif route == "emulator":
        from . import emulator_executor
        emulator_executor.run_plan(plan, table, checks, family)
    else:
        raise ValueError(f'route must be "metal" or "emulator", got {route!r}')
    return temporaries


def begins_on_16_bytes(tensor):
    """Whether the tensor's first element sits on 16 bytes: allocations are aligned (MTLBuffers to pages, CPU tensors
    to 64 bytes), so the storage offset decides. The planners allow vector accesses from it."""
    return tensor.storage_offset() * tensor.element_size() % 16 == 0


def gpu_family(route):
    """The block tables a route plans for: the MPS device's family, or (emulator) $MFA_TORCH_GPU_FAMILY, default
    "apple9"; tests plan for every family explicitly."""
    if route == "metal":
        from .. import _C
        return _C.mps_gpu_family()
    import os
    return os.environ.get("MFA_TORCH_GPU_FAMILY", "apple9")
