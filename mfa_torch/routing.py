"""Which executor runs a call: the backend switch and the route decision that `explain` reports.

Routes:
  "torch-sdpa": PyTorch's own scaled_dot_product_attention (it covers the requested semantics here);
  "flex", "sdpa-mask": PyTorch's flex_attention or SDPA, given what it lacks by mfa_torch (pytorch_paths.py);
  "reference":  mfa_torch's ops with the chunked, memory-bounded PyTorch kernels (mfa_torch/reference.py);
  "metal":      mfa_torch's ops with the Metal kernels on the MPS stream;
  "emulator":   mfa_torch's ops with the Metal kernels run on CPU tensors by the MSL emulator.
"""
import contextlib
import os
import threading
import warnings

from . import _C
from ._thread_setting import thread_setting

BACKENDS = ("auto", "reference", "flex", "sdpa-mask", "metal", "emulator")
# Backends that force one of PyTorch's paths for attention (GEMM takes the reference route under them).
PYTORCH_PATHS = ("flex", "sdpa-mask")
_ENV = "MFA_TORCH_BACKEND"
# The selection is one global name; rebinding it is atomic, so readers (also inside torch.compile) take no lock.
_backend = os.environ.get(_ENV, "auto")
_lock = threading.Lock()
# A backward runs under the backend its forward ran under (see pinned_backend); per thread, as autograd runs an op's
# backward formula and the ops it calls on one thread.
_pinned = threading.local()


def _checked(name, source):
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


def get_backend():
    """The current backend name: set_backend()/backend() if used, else $MFA_TORCH_BACKEND, else "auto"."""
    pinned = getattr(_pinned, "name", None)
    return pinned if pinned is not None else _checked(_backend, f"environment variable {_ENV}")


def set_backend(name):
    """Select the backend for all later calls: "auto", "reference", "flex", "sdpa-mask", "metal" (MPS only) or
    "emulator"."""
    global _backend
    _backend = _checked(name, "backend")


@contextlib.contextmanager
def backend(name):
    """Context manager selecting a backend for the calls inside the block, restoring the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def pinned_backend(name):
    """This thread's calls inside the block take backend `name`, whatever is selected: the backward of an op
    recorded under one backend runs on the same kernels as its forward, even when autograd runs it after the
    `with backend(...)` block has ended (a forward on the Metal kernels and a backward on PyTorch's would
    recompute the probabilities differently from the ones the output was made of)."""
    return thread_setting(_pinned, "name", name)


class Route:
    """The executor a call takes, and why (the text `mfa_torch.explain` shows)."""

    def __init__(self, name, reason):
        self.name, self.reason = name, reason

    def __str__(self):
        return f"route: {self.name} ({self.reason})"


_warned = set()


def warn_once(key, message):
    """warnings.warn(message) the first time `key` is seen in this process."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, stacklevel=4)


def kernel_route(device, metal_lacks=()):
    """"metal" or "emulator" when mfa_torch's Metal kernels run a call on `device`, else None (another route).

    metal_lacks: what the call needs that the Metal kernels do not implement (e.g. float64): such calls take the
    reference route with a one-time warning. Raises if the selected backend cannot take tensors on `device`.
    """
    chosen = get_backend()
    if chosen == "emulator" and device.type != "cpu":
        raise ValueError(f'backend "emulator" runs CPU tensors only, got tensors on {device}')
    if chosen == "metal":
        if device.type != "mps":
            raise ValueError(f'backend "metal" needs tensors on the "mps" device, got tensors on {device}')
        if not _C.has_mps_executor():
            raise RuntimeError('backend "metal": this build of mfa_torch has no MPS executor (it is compiled on '
                               'macOS only); reinstall mfa_torch on the Mac')
    wanted = "emulator" if chosen == "emulator" else \
        "metal" if device.type == "mps" and chosen in ("auto", "metal") else None
    if wanted == "metal" and not _C.has_mps_executor():
        warn_once("no-executor", "mfa_torch: this build has no MPS executor (compiled on another platform); MPS "
                                  "tensors take the reference route (PyTorch operations)")
        return None
    if wanted and metal_lacks:
        warn_once(("lacks",) + tuple(metal_lacks), "mfa_torch: the Metal kernels do not implement "
                   + ", ".join(metal_lacks) + "; such calls take PyTorch's route or the reference route "
                   "(mfa_torch.explain names it)")
        return None
    return wanted


def choose(device, torch_lacks=None, metal_lacks=(), dropout=False, pytorch_path=None):
    """Route of a call on `device`.

    torch_lacks: None for calls that always run mfa_torch's ops (GEMM); else the list of requested features
    PyTorch's SDPA does not implement (empty: PyTorch's SDPA can serve the call as it is).
    metal_lacks: what the call needs that the Metal kernels do not implement (see kernel_route).
    dropout: the call applies dropout; the route says whose random stream drops the probabilities.
    pytorch_path: for attention, pytorch_paths.choice bound to the call: forced (a PYTORCH_PATHS backend or None)
    -> (route, description), or (None, why no PyTorch path takes the call).
    """
    if get_backend() in PYTORCH_PATHS and pytorch_path is not None:
        route = Route(*pytorch_path(get_backend()))
    else:
        route = _choose(device, torch_lacks, metal_lacks, pytorch_path)
    if dropout:
        route.reason += ("; dropout: PyTorch's own (its RNG stream)" if route.name in ("torch-sdpa", "sdpa-mask") else
                         "; dropout: mfa_torch's counter-based keep mask, seeded from torch's default generator and "
                         "regenerated by the backward: not PyTorch's dropout stream, so a seed drops other "
                         "probabilities than PyTorch's SDPA would")
    return route


def _choose(device, torch_lacks, metal_lacks, pytorch_path):
    kernel = kernel_route(device, metal_lacks)
    if kernel == "metal":
        return Route("metal", "mfa_torch's Metal kernels on the MPS stream")
    if kernel == "emulator":
        return Route("emulator", "mfa_torch's Metal kernels run by the MSL emulator on the CPU (backend "
                                 '"emulator")')
    metal_wanted = device.type == "mps" or get_backend() == "emulator"
    lacking = f"; the Metal kernels lack: {', '.join(metal_lacks)}" if metal_lacks and metal_wanted else ""
    if torch_lacks is None:
        return Route("reference", "mfa_torch's op with PyTorch's matmul as its kernel" + lacking)
    if not torch_lacks:
        return Route("torch-sdpa", "PyTorch's SDPA implements the requested semantics on this device" + lacking)
    because = "because PyTorch's SDPA lacks: " + ", ".join(torch_lacks)
    if pytorch_path is not None and get_backend() == "auto":
        name, text = pytorch_path(None)
        if name is not None:
            return Route(name, f"{text}, {because}{lacking}")
        lacking += f"; no PyTorch path takes it ({text})"
    return Route("reference", f"mfa_torch's chunked online-softmax kernels, {because}{lacking}")
