"""The lane-layout self-test kernel (shaders/lane_layout_self_test.metal) as a launch plan, run by the route's
executor like every other kernel: what simdgroup_load puts in each lane, where the shader helpers say it sits, and
one simdgroup_multiply_accumulate. mfa_torch.doctor compares the results with the documented layout."""
import torch

from .. import _C
from . import executors

SHADER = "lane_layout_self_test.metal"
KERNEL = "lane_layout_self_test"
LOADS = ("device", "device transposed", "threadgroup", "threadgroup transposed")  # the kernel's order
# The kernel's buffers in [[buffer(i)]] order: name, element type, numel.
BUFFERS = (("iota", torch.float32, 64), ("a", torch.float32, 64), ("b", torch.float32, 64), ("c", torch.float32, 64),
           ("loaded", torch.float32, len(LOADS) * 32 * 2), ("coords", torch.int32, 32 * 2),
           ("product", torch.float32, 64))


def plan():
    """One SIMD-group in one threadgroup; 64 floats of static threadgroup memory."""
    launch = _C.Launch()
    launch.shader, launch.kernel = SHADER, KERNEL
    launch.threadgroups, launch.threads_per_threadgroup = [1, 1, 1], [32, 1, 1]
    launch.threadgroup_memory = 64 * 4
    arguments = []
    for index, (name, _, _) in enumerate(BUFFERS):
        argument = _C.Argument()
        argument.index, argument.tensor = index, name
        arguments.append(argument)
    launch.arguments = arguments
    result = _C.Plan()
    result.launches = [launch]
    return result


def run(route, a, b, c):
    """Runs the kernel on route "metal" (MPS) or "emulator" (CPU) with 8x8 float32 operands a, b, c. Returns CPU
    tensors: loaded (len(LOADS), 32 lanes, 2) thread_elements() of the iota matrix per load, coords (32, 2) each
    lane's (mfa_tile_row, mfa_tile_col), product (8, 8) a * b + c from the matrix unit."""
    device = torch.device("mps" if route == "metal" else "cpu")
    inputs = {"iota": torch.arange(64, dtype=torch.float32), "a": a, "b": b, "c": c}
    tensors = {name: inputs[name].reshape(-1).to(device, dtype, copy=True) if name in inputs else
               torch.full((numel,), -1, dtype=dtype, device=device) for name, dtype, numel in BUFFERS}
    executors.run(route, plan(), tensors)
    return {"loaded": tensors["loaded"].cpu().reshape(len(LOADS), 32, 2),
            "coords": tensors["coords"].cpu().reshape(32, 2),
            "product": tensors["product"].cpu().reshape(8, 8)}
