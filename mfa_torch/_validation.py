"""Argument checks shared by the public functions and the ops: errors name the argument and what was expected.

Every error is also a RuntimeError: PyTorch's SDPA and FlashAttention raise RuntimeError for the calls mfa_torch
rejects (their checks are TORCH_CHECKs), and code written for them catches that; `except ValueError` and
`except TypeError` keep working too.
"""
import numbers
import operator

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ArgumentError(ValueError, RuntimeError):
    """An argument with a value mfa_torch cannot take."""


class ArgumentTypeError(TypeError, RuntimeError):
    """An argument of a type (or dtype) mfa_torch cannot take."""


def require(condition, message, error=ArgumentError):
    if not condition:
        raise error(message)


def overrides_torch_functions(t):
    """Whether t is a tensor whose type gives torch functions its own meaning (a __torch_function__ subclass, or a
    nested tensor): PyTorch's function decides what such a call means, so mfa_torch hands it over. Parameters and
    the tensors of torch's own tracing (FakeTensor, FunctionalTensor) disable __torch_function__ and stay ours."""
    if not isinstance(t, torch.Tensor):
        return False
    cls = type(t)
    return t.is_nested or (cls is not torch.Tensor and cls.__torch_function__ is not torch._C._disabled_torch_function_impl)


def check_float_tensors(**tensors):
    """Each argument is a floating tensor; all share the first one's dtype and device (the messages begin with
    PyTorch's own phrases, which its tests match)."""
    *rest, last = tensors
    names = f"{', '.join(rest)}{',' if len(rest) > 1 else ''} and {last}" if rest else last
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}",
                ArgumentTypeError)
        require(t.dtype == first.dtype, f"Expected {names} to have the same dtype, but {name} has dtype {t.dtype} and "
                                        f"{first_name} has dtype {first.dtype}", ArgumentTypeError)
        require(t.device == first.device, f"Expected {names} to have the same device type, but {name} is on "
                                          f"{t.device} and {first_name} is on {first.device}")
    require(first.dtype in FLOAT_DTYPES, f"{names} must be floating tensors (float16, bfloat16, float32 or "
                                         f"float64), got {first.dtype}", ArgumentTypeError)


def check_finite_number(name, value, minimum=None):
    require(isinstance(value, numbers.Real) and not isinstance(value, bool),
            f"{name} must be a real number, got {type(value).__name__}", ArgumentTypeError)
    require(value == value and abs(value) != float("inf"), f"{name} must be finite, got {value}")
    if minimum is not None:
        require(value >= minimum, f"{name} must be >= {minimum}, got {value}")
    return float(value)


# Scales and softcaps reach the kernels as float32: values beyond its range would silently become inf (NaN
# results) or 0 (a softcap that is on in Python but off in the kernel).
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32


def check_scale(name, value):
    """A finite scale within float32's range."""
    value = check_finite_number(name, value)
    require(abs(value) <= FLOAT32_MAX, f"{name} must be within float32's range (|{name}| <= 3.4e38), got {value}")
    return value


def check_softcap(name, value):
    """0 (off) or a positive float32 normal number."""
    value = check_finite_number(name, value, minimum=0)
    require(value == 0 or FLOAT32_TINY <= value <= FLOAT32_MAX,
            f"{name} must be 0 (off) or within float32's normal range [1.2e-38, 3.4e38], got {value}")
    return value


def check_dropout(dropout_p, one_allowed=False):
    """A dropout probability in [0, 1), or [0, 1] where the API takes 1 (PyTorch's SDPA: everything dropped)."""
    check_finite_number("dropout_p", dropout_p)
    require(0 <= dropout_p <= 1 if one_allowed else 0 <= dropout_p < 1,
            f"dropout_p must be in [0, {'1]' if one_allowed else '1)'}, got {dropout_p}")
    return float(dropout_p)


def check_window(window_size):
    """(left, right) ints, each >= -1 (-1 = unbounded), from any pair: a tuple or list of ints, numpy or 0-d tensor
    integers, or a 2-element integer tensor (FlashAttention's own tests pass torch.randint(0, n, (2,)))."""
    pair = window_size.tolist() if isinstance(window_size, torch.Tensor) else window_size
    try:
        sides = list(pair)
    except TypeError:
        sides = None
    require(sides is not None and len(sides) == 2, f"window_size must be a (left, right) pair of ints, got "
                                                   f"{window_size!r}", ArgumentTypeError)
    checked = []
    for side, w in zip(("left", "right"), sides):
        try:
            value = None if isinstance(w, bool) else operator.index(w)
        except TypeError:
            value = None
        require(value is not None, f"window_size {side} must be an int, got {type(w).__name__}", ArgumentTypeError)
        require(value >= -1, f"window_size {side} must be >= -1 (-1 = unbounded), got {value}")
        checked.append(value)
    return tuple(checked)
