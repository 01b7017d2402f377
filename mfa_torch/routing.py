"""Which executor runs a call: the backend switch and the route decision that `explain` reports.

Routes:
  "torch-sdpa": PyTorch's own scaled_dot_product_attention (it covers the requested semantics here);
  "reference":  mfa_torch's ops with the chunked, memory-bounded PyTorch kernels (mfa_torch/reference.py);
  "metal":      mfa_torch's ops with the Metal kernels on the MPS stream;
  "emulator":   mfa_torch's ops with the Metal kernels run on CPU tensors by the MSL emulator.
"""
import contextlib
import os
import threading
import warnings

BACKENDS = ("auto", "reference", "metal", "emulator")
_ENV = "MFA_TORCH_BACKEND"
# The selection is one global name; rebinding it is atomic, so readers (also inside torch.compile) take no lock.
_backend = os.environ.get(_ENV, "auto")
_lock = threading.Lock()


def _checked(name, source):
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


def get_backend():
    """The current backend name: set_backend()/backend() if used, else $MFA_TORCH_BACKEND, else "auto"."""
    return _checked(_backend, f"environment variable {_ENV}")


def set_backend(name):
    """Select the backend for all later calls: "auto", "reference", "metal" (MPS only) or "emulator"."""
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


class Route:
    """The executor a call takes, and why (the text `mfa_torch.explain` shows)."""

    def __init__(self, name, reason):
        self.name, self.reason = name, reason

    def __str__(self):
        return f"route: {self.name} ({self.reason})"


_warned = set()


def _warn_once(key, message):
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, stacklevel=4)


def _kernel_route(device):
    """The Metal route if the backend asks for it (or "auto" on MPS), else None; raises if it cannot be honoured."""
    chosen = get_backend()
    if chosen == "emulator":
        if device.type != "cpu":
            raise ValueError(f'backend "emulator" runs CPU tensors only, got tensors on {device}')
        raise NotImplementedError(
            'backend "emulator" is not wired yet: the Metal attention and GEMM kernels it runs have not '
            'landed; use "auto" or "reference"')
    if chosen == "metal":
        if device.type != "mps":
            raise ValueError(f'backend "metal" needs tensors on the "mps" device, got tensors on {device}')
        raise NotImplementedError('backend "metal": the Metal kernels are not part of this version yet; '
                                  'use "auto" or "reference"')
    if chosen == "auto" and device.type == "mps":
        _warn_once("mps", "mfa_torch: the Metal kernels are not part of this version yet; MPS tensors take "
                          "the reference route (PyTorch operations)")
    return None


def choose(device, torch_lacks=None):
    """Route of a call on `device`.

    torch_lacks: None for calls that always run mfa_torch's ops (GEMM); else the list of requested features
    PyTorch's SDPA does not implement (empty: PyTorch's SDPA can serve the call as it is).
    """
    kernel = _kernel_route(device)
    if kernel is not None:
        return kernel
    if torch_lacks is None:
        return Route("reference", "mfa_torch's op with PyTorch's matmul as its kernel")
    if not torch_lacks:
        return Route("torch-sdpa", "PyTorch's SDPA implements the requested semantics on this device")
    return Route("reference", "mfa_torch's chunked online-softmax kernels, because PyTorch's SDPA lacks: "
                 + ", ".join(torch_lacks))
