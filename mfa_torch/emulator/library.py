"""A compiled MSL library and its dispatches (the in-process execution mode)."""
import ctypes
import re
import subprocess

from . import counters
from .arguments import MAX_BUFFERS, launch_request, nonuniform_grid, uniform_grid
from .compiler import PACKAGE_DIR
from .errors import KernelError

U32x3 = ctypes.c_uint32 * 3


class _LaunchStruct(ctypes.Structure):
    """Mirrors `struct msl_launch` in runtime/launch.hpp."""

    _fields_ = [
        ("buffers", ctypes.c_void_p * MAX_BUFFERS),
        ("buffer_bytes", ctypes.c_uint64 * MAX_BUFFERS),
        ("threadgroup_memory", ctypes.c_uint32 * MAX_BUFFERS),
        ("grid", U32x3),
        ("threadgroup_size", U32x3),
        ("os_threads", ctypes.c_int32),
        ("strict", ctypes.c_int32),
        ("timeout_seconds", ctypes.c_double),
        ("sync_points", ctypes.c_uint64),
        ("buffer_device", ctypes.c_uint8 * MAX_BUFFERS),
        ("profile", ctypes.c_uint64 * counters.PROFILE_SLOTS),
        ("error", ctypes.c_char * 4096),
    ]


_FAULT_PC = re.compile(r"\[@pc:(?P<module>[^+\]]+)\+(?P<offset>0x[0-9a-f]+)\]")


def source_line_of_fault(message):
    """Replace a faulting instruction's module+offset by its .metal file:line (addr2line on the -g1
    build; with inlining, the innermost location outside the emulator's own shim and runtime)."""
    m = _FAULT_PC.search(message)
    if not m:
        return message
    try:
        result = subprocess.run(["addr2line", "-i", "-e", m["module"], m["offset"]], capture_output=True, text=True,
                                timeout=30)
        locations = [line.split(" (discriminator")[0] for line in result.stdout.splitlines()]
    except (OSError, subprocess.TimeoutExpired):
        locations = []
    kernel_source = [loc for loc in locations if not loc.startswith(("??", str(PACKAGE_DIR)))]
    if not kernel_source:
        return message
    return kernel_source[0] + ": " + message.replace(m.group(), "").replace("  ", " ")


class LibraryBase:
    """Kernels of one MSL source and how to dispatch them; subclasses run the launch."""

    def __init__(self, translation, filename):
        self._kernels = translation.kernels
        self.function_constants = translation.function_constants
        self.filename = filename
        self.last_sync_points = 0  # barrier and SIMD-group arrivals of the last dispatch (for benchmarks)

    @property
    def kernel_names(self):
        return [k.name for k in self._kernels]

    def __repr__(self):
        return f"<emulated MSL library {self.filename}: {', '.join(self.kernel_names)}>"

    def dispatch(self, kernel_name, buffers, threadgroups, threads_per_threadgroup, *,
                 threadgroup_memory=None, strict=True, os_threads=None, timeout=None):
        """Like MTLComputeCommandEncoder.dispatchThreadgroups. buffers: {index: CPU tensor (used in place),
        bytes or ctypes value}; threadgroup_memory: {index: bytes} for [[threadgroup(i)]] parameters;
        strict: SIMD-group functions must be reached by every live lane of the SIMD-group;
        os_threads: worker threads (default: all available cores); timeout: seconds before the launch
        is abandoned with a KernelError (default: no limit)."""
        grid, size = uniform_grid(threadgroups, threads_per_threadgroup)
        self._run(launch_request(self._kernels, kernel_name, buffers, grid, size, threadgroup_memory, strict, os_threads,
                                 timeout))

    def dispatch_threads(self, kernel_name, buffers, threads, threads_per_threadgroup, *,
                         threadgroup_memory=None, strict=True, os_threads=None, timeout=None):
        """Like dispatchThreads: a grid of `threads`, the last threadgroups possibly partial."""
        grid, size = nonuniform_grid(threads, threads_per_threadgroup)
        self._run(launch_request(self._kernels, kernel_name, buffers, grid, size, threadgroup_memory, strict, os_threads,
                                 timeout))

    def _run(self, request):
        raise NotImplementedError


class Library(LibraryBase):
    """Kernels compiled into a shared library and run in this process. Use `compile()` to make one.
    A profile build (compile(..., profile=True)) counts its work: `last_profile` is the last launch's dict
    (emulator/counters.py), also recorded in every open `profile()` block."""

    def __init__(self, path, translation, filename, defines=None, profiled=False):
        super().__init__(translation, filename)
        self._dll = ctypes.CDLL(str(path))
        self.defines = dict(defines) if isinstance(defines, dict) else {name: None for name in defines or ()}
        self.profiled = profiled
        self.last_profile = None
        if profiled and ctypes.c_int.in_dll(self._dll, "msl_profile_slots").value != counters.PROFILE_SLOTS:
            raise RuntimeError("emulator/counters.py and runtime/counters.hpp disagree on the counter slots")

    def _run(self, request):
        if counters.active() and not self.profiled:
            raise ValueError(f"{self.filename}: this library was compiled without profile=True, so its launches cannot "
                             "be counted inside a profile() block")
        launch = _LaunchStruct()
        for param in self._kernels[request.kernel_index].params:
            if param.attribute == "buffer" and param.device:
                launch.buffer_device[param.index] = 1
        keep_alive = []
        for index, buffer in request.buffers.items():
            if buffer.tensor is not None:
                launch.buffers[index] = buffer.tensor.data_ptr() or None
            else:
                data = ctypes.create_string_buffer(buffer.data, max(len(buffer.data), 16))
                keep_alive.append(data)
                launch.buffers[index] = ctypes.addressof(data)
            launch.buffer_bytes[index] = buffer.nbytes
        for index, nbytes in request.threadgroup_memory.items():
            launch.threadgroup_memory[index] = nbytes
        launch.grid = U32x3(*request.grid)
        launch.threadgroup_size = U32x3(*request.threadgroup_size)
        launch.os_threads = request.os_threads
        launch.strict = int(request.strict)
        launch.timeout_seconds = request.timeout or 0.0
        run = getattr(self._dll, f"msl_kernel_{request.kernel_index}")
        run.argtypes = [ctypes.POINTER(_LaunchStruct)]
        run.restype = ctypes.c_int
        status = run(ctypes.byref(launch))  # ctypes releases the GIL for the call
        self.last_sync_points = launch.sync_points
        message = launch.error.decode(errors="replace")
        if status == 2:
            raise ValueError(message)
        if status != 0:
            raise KernelError(source_line_of_fault(message))
        if self.profiled:
            groups = [(g + t - 1) // t for g, t in zip(request.grid, request.threadgroup_size)]
            name = self._kernels[request.kernel_index].name
            self.last_profile = counters.launch_record(name, self.defines, groups, request.threadgroup_size,
                                                      launch.profile)
            counters.record(self.last_profile)
