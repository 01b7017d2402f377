"""patch()/unpatch(): route torch.nn.functional.scaled_dot_product_attention (and, opt-in,
torch.nn.functional.linear, torch.matmul and torch.nn.attention.flex_attention.flex_attention) through mfa_torch, so
models use it unchanged.

The patch replaces the attributes on the torch.nn.functional and torch modules. Code that looks them up
at call time (diffusers' processors and attention dispatcher, transformers' sdpa path, torch's own
nn.MultiheadAttention) sees the patch; a name bound earlier with `from torch.nn.functional import
scaled_dot_product_attention` keeps the original function.

Calls mfa_torch does not take (tensors off cpu/mps, tensor subclasses with their own __torch_function__, nested
tensors, integer dtypes, `out=`) go to the function that was replaced, unchanged; an attention mask from
torch.nn.attention.bias (causal_upper_left / causal_lower_right) is read by mfa_torch itself. On CPU, mfa_torch itself hands whatever PyTorch's
SDPA implements to PyTorch's kernel, so patching changes no result there. Each patched function has an
`explain(...)` attribute taking the same arguments and saying where such a call goes.
"""
import functools
import threading
import warnings

import torch
import torch.nn.attention.flex_attention as _torch_flex
import torch.nn.functional as F

from . import attention as _attention
from . import flex as _flex
from . import gemm as _gemm
from ._validation import FLOAT_DTYPES, overrides_torch_functions

_DEVICES = ("cpu", "mps")  # elsewhere (CUDA, ...) PyTorch's own kernels are the better choice

_lock = threading.Lock()
_installed = {}  # name -> (wrapper, replaced function), for the targets currently patched

# mfa_torch's own implementation calls torch functions (torch.matmul in its reference kernels): while a
# patched call runs mfa_torch on a thread, patched functions called on that thread take the originals,
# which also rules out recursion.
_busy = threading.local()


def _declines(*tensors):
    """Why mfa_torch leaves a call with these tensor arguments (None entries ignored) to torch, or None."""
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            return f"{type(t).__name__} arguments"
        if t.is_nested:
            return "nested tensors"
        if overrides_torch_functions(t):
            return f"{type(t).__name__} arguments: their type gives torch functions their meaning"
        if t.device.type not in _DEVICES:
            return f"tensors on {t.device.type}: mfa_torch accelerates {' and '.join(_DEVICES)} only"
        if t.dtype not in FLOAT_DTYPES:
            return f"{t.dtype} tensors"
    return None


def _wrap(label, original, accelerated, tensors_of, describe):
    """The patched function `label`: `accelerated` (mfa_torch) for calls it takes, else `original` unchanged.

    tensors_of(*args, **kwargs) -> (tensors to check, reason to decline regardless or None);
    describe(*args, **kwargs) -> the route text of an accelerated call, for explain().
    """
    def decision(args, kwargs):
        if getattr(_busy, "active", False):
            return "a call made by mfa_torch's own implementation"
        tensors, reason = tensors_of(*args, **kwargs)
        return reason or _declines(*tensors)

    @functools.wraps(original)
    def patched(*args, **kwargs):
        if decision(args, kwargs) is not None:
            return original(*args, **kwargs)
        _busy.active = True
        try:
            return accelerated(*args, **kwargs)
        finally:
            _busy.active = False

    def explain(*args, **kwargs):
        reason = decision(args, kwargs)
        if reason is not None:
            return f"{label} (patched): the original function ({reason})"
        return f"{label} (patched): mfa_torch.{accelerated.__name__}, {describe(*args, **kwargs)}"

    patched.explain = explain
    return patched


def _sdpa_tensors(query, key, value, *args, **kwargs):
    return (query, key, value), None


def _linear_tensors(input, weight, bias=None):
    return (input, weight, bias), None


def _matmul_tensors(input, other, *, out=None):
    return (input, other), None if out is None else "out= given"


def _flex_tensors(query, key, value, *args, return_aux=None, **kwargs):
    return (query, key, value), None if return_aux is None else "return_aux given"


def _gemm_route(input, *args, **kwargs):
    return str(_gemm.route(input))


_TARGETS = {  # name -> (module, attribute, mfa_torch function, argument reader, route description)
    "attention": (F, "scaled_dot_product_attention", _attention.scaled_dot_product_attention, _sdpa_tensors,
                  _attention.explain),
    "linear": (F, "linear", _gemm.linear, _linear_tensors, _gemm_route),
    "matmul": (torch, "matmul", _gemm.matmul, _matmul_tensors, _gemm_route),
    "flex_attention": (_torch_flex, "flex_attention", _flex.flex_attention, _flex_tensors, _flex.explain),
}


def _install(names):
    """Make exactly `names` patched (callers hold _lock)."""
    for name in set(_installed) - names:
        module, attribute = _TARGETS[name][:2]
        wrapper, original = _installed.pop(name)
        if getattr(module, attribute) is wrapper:
            setattr(module, attribute, original)
        else:  # someone replaced our function since: theirs stays, as removing it would undo their change
            warnings.warn(f"mfa_torch.unpatch: {module.__name__}.{attribute} was replaced after mfa_torch "
                          "patched it; leaving the replacement in place", stacklevel=4)
    for name in names - set(_installed):
        module, attribute, accelerated, tensors_of, describe = _TARGETS[name]
        original = getattr(module, attribute)
        wrapper = _wrap(f"{module.__name__}.{attribute}", original, accelerated, tensors_of, describe)
        setattr(module, attribute, wrapper)
        _installed[name] = (wrapper, original)


class _PatchState:
    """What patch() returns: as a context manager, restores on exit what was patched before the call."""

    def __init__(self, previous):
        self._previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with _lock:
            _install(self._previous)


def patch(attention=True, linear=False, matmul=False, flex_attention=False):
    """Route torch.nn.functional.scaled_dot_product_attention (attention=True), torch.nn.functional.linear
    (linear=True), torch.matmul (matmul=True) and torch.nn.attention.flex_attention.flex_attention
    (flex_attention=True) through mfa_torch. Idempotent and thread-safe; patches already in place stay.
    `with mfa_torch.patch(): ...` restores the previous state on exit.
    """
    wanted = {name for name, on in (("attention", attention), ("linear", linear), ("matmul", matmul),
                                    ("flex_attention", flex_attention)) if on}
    with _lock:
        previous = frozenset(_installed)
        _install(previous | wanted)
    return _PatchState(previous)


def unpatch():
    """Restore every function patch() replaced. A no-op when nothing is patched."""
    with _lock:
        _install(frozenset())
