"""Checking and normalising the Python-side arguments of a dispatch (shared by all execution modes).

Mistakes here are the caller's, not the kernel's: they raise ValueError / TypeError naming the argument.
"""
import ctypes
import dataclasses
import os

import torch

MAX_BUFFERS = 31
MAX_THREADS_PER_THREADGROUP = 1024


@dataclasses.dataclass
class Buffer:
    index: int
    tensor: torch.Tensor | None  # in-place device memory
    data: bytes | None  # a copy, for constant arguments given as bytes / ctypes values

    @property
    def nbytes(self):
        return self.tensor.numel() * self.tensor.element_size() if self.tensor is not None else len(self.data)


@dataclasses.dataclass
class LaunchRequest:
    kernel_index: int
    buffers: dict  # index -> Buffer
    grid: tuple  # threads per grid
    threadgroup_size: tuple
    threadgroup_memory: dict  # index -> bytes
    strict: bool
    os_threads: int
    timeout: float | None  # seconds


def _dims(value, what, allow_zero):
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise ValueError(f"{what} must be a tuple of 1 to 3 integers, got {value!r}")
    dims = []
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1) or v >= 2**32:
            raise ValueError(f"{what} must hold integers >= {0 if allow_zero else 1}, got {value!r}")
        dims.append(v)
    return tuple(dims) + (1,) * (3 - len(dims))


def _buffer(index, value):
    if not isinstance(index, int) or not 0 <= index < MAX_BUFFERS:
        raise ValueError(f"buffers: index {index!r} is not a buffer index (0..{MAX_BUFFERS - 1})")
    name = f"buffers[{index}]"
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"{name}: the emulator runs on CPU tensors, got a tensor on {value.device}")
        if not value.is_contiguous():
            raise ValueError(f"{name}: tensor is not contiguous (kernels see raw memory; call .contiguous())")
        return Buffer(index, value, None)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Buffer(index, None, bytes(value))
    if isinstance(value, (ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array)):
        return Buffer(index, None, bytes(value))
    raise TypeError(
        f"{name}: expected a CPU torch.Tensor, bytes or a ctypes value (e.g. ctypes.c_uint32(n)), got {type(value).__name__}"
    )


def launch_request(kernels, kernel_name, buffers, grid, threadgroup_size, threadgroup_memory, strict, os_threads, timeout):
    names = [k.name for k in kernels]
    if kernel_name not in names:
        raise ValueError(f"kernel_name: no kernel {kernel_name!r} in this library (kernels: {', '.join(names) or 'none'})")
    kernel_index = names.index(kernel_name)
    kernel = kernels[kernel_index]
    if not isinstance(buffers, dict):
        raise TypeError("buffers must be a dict {buffer index: tensor / bytes / ctypes value}")
    normalised = {index: _buffer(index, value) for index, value in buffers.items()}
    threadgroup_memory = dict(threadgroup_memory or {})
    for p in kernel.params:
        if p.attribute == "buffer" and p.enabled and p.index not in normalised:
            raise ValueError(f"buffers: kernel {kernel_name} needs buffer {p.index} (parameter '{p.name}')")
        if p.attribute == "threadgroup" and p.index not in threadgroup_memory:
            raise ValueError(
                f"threadgroup_memory: kernel {kernel_name} needs the size of [[threadgroup({p.index})]] (parameter '{p.name}')"
            )
    for index, nbytes in threadgroup_memory.items():
        if not isinstance(index, int) or not 0 <= index < MAX_BUFFERS:
            raise ValueError(f"threadgroup_memory: {index!r} is not a threadgroup buffer index")
        if not isinstance(nbytes, int) or nbytes < 0 or nbytes % 16:
            raise ValueError(f"threadgroup_memory[{index}]: length must be a non-negative multiple of 16 bytes, got {nbytes!r}")
    if os_threads is None:
        os_threads = len(os.sched_getaffinity(0))
    if not isinstance(os_threads, int) or os_threads < 1:
        raise ValueError(f"os_threads must be a positive integer, got {os_threads!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return LaunchRequest(kernel_index, normalised, grid, threadgroup_size, threadgroup_memory, bool(strict), os_threads,
                         timeout)


def uniform_grid(threadgroups, threads_per_threadgroup):
    """dispatchThreadgroups: (threads per grid, threads per threadgroup)."""
    groups = _dims(threadgroups, "threadgroups", allow_zero=True)
    size = _dims(threads_per_threadgroup, "threads_per_threadgroup", allow_zero=False)
    return tuple(g * s for g, s in zip(groups, size)), size


def nonuniform_grid(threads, threads_per_threadgroup):
    """dispatchThreads: the last threadgroups along each dimension may be partial."""
    return _dims(threads, "threads", allow_zero=True), _dims(threads_per_threadgroup, "threads_per_threadgroup", allow_zero=False)
