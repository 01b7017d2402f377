"""Peak memory of one call on a Linux CPU: the process's resident high-water mark (VmHWM) during the call, after
resetting it, minus the resident memory before. PyTorch's CPU tensors come from glibc's malloc, which keeps freed
memory for reuse: malloc_trim returns it to the system first, so the measurement sees the call's own allocations
instead of memory cached from earlier calls (malloc's settings stay untouched: they change how fast code runs)."""
import ctypes
import ctypes.util
import re
import sys


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def _status_bytes(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1)) * 1024


def extra_memory(fn):
    """Runs fn once; returns the bytes of resident memory it added at its peak, or None where this cannot be read
    (not Linux with glibc)."""
    if _LIBC is None:
        fn()
        return None
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _status_bytes("VmRSS")
    fn()
    return max(0, _status_bytes("VmHWM") - before)
