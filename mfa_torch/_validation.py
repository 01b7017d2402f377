"""Argument checks shared by the public functions and the ops: errors name the argument and what was expected."""
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def require(condition, message, error=ValueError):
    if not condition:
        raise error(message)


def check_float_tensors(**tensors):
    """Each argument is a floating tensor; all share the first one's dtype and device."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
        require(t.dtype in FLOAT_DTYPES,
                f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {t.dtype}", TypeError)
        require(t.dtype == first.dtype, f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}",
                TypeError)
        require(t.device == first.device, f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_finite_number(name, value, minimum=None):
    require(isinstance(value, numbers.Real) and not isinstance(value, bool),
            f"{name} must be a real number, got {type(value).__name__}", TypeError)
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


def check_dropout(dropout_p):
    check_finite_number("dropout_p", dropout_p)
    require(0 <= dropout_p < 1, f"dropout_p must be in [0, 1), got {dropout_p}")
    return float(dropout_p)


def check_window(window_size):
    """A (left, right) pair of ints, each >= -1 (-1 = unbounded)."""
    require(isinstance(window_size, (tuple, list)) and len(window_size) == 2,
            f"window_size must be a (left, right) pair, got {window_size!r}", TypeError)
    for side, w in zip(("left", "right"), window_size):
        require(isinstance(w, numbers.Integral) and not isinstance(w, bool),
                f"window_size {side} must be an int, got {type(w).__name__}", TypeError)
        require(w >= -1, f"window_size {side} must be >= -1 (-1 = unbounded), got {w}")
    return int(window_size[0]), int(window_size[1])
