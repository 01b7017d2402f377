"""Where the benchmark runs: the device, the machine and versions recorded in the results' header, the memory
budget, synchronisation, and the optional MLX."""
import datetime
import importlib
import os
import platform
import subprocess
import sys

import torch

import mfa_torch
from .. import _C
from ..metal import executors


def device():
    """The Apple GPU when PyTorch sees one, else the CPU (where the reference route is timed)."""
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def synchronize(dev):
    """Wait for queued work: MPS runs asynchronously; CPU calls return when done."""
    if dev.type == "mps":
        torch.mps.synchronize()


def mlx_core():
    """mlx.core when MLX is installed (optional: compared side by side), else None."""
    try:
        return importlib.import_module("mlx.core")
    except ImportError:
        return None


def chip_name():
    if sys.platform == "darwin":
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def os_name():
    mac = platform.mac_ver()[0]
    return f"macOS {mac}" if mac else platform.platform()


def memory_budget(dev):
    """Bytes a single case may use: 3/4 of what Metal recommends for this process (MPS) or of physical RAM."""
    total = torch.mps.recommended_max_memory() if dev.type == "mps" else \
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total * 3 // 4


def gpu_family(dev, emulator):
    """The GPU family whose block tables the Metal kernels use, or None when they do not run."""
    if emulator:
        return executors.gpu_family("emulator")
    return executors.gpu_family("metal") if dev.type == "mps" and _C.has_mps_executor() else None


def describe(dev, mode, emulator=False):
    """(key, value) lines of the results' header."""
    mx = mlx_core()
    family = gpu_family(dev, emulator)
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("mode", mode),
        ("chip", chip_name()),
        ("os", os_name()),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("mfa_torch", mfa_torch.__version__),
        ("mlx", mx.__version__ if mx else "not installed"),
        ("device", str(dev)),
        ("mfa_torch backend", mfa_torch.get_backend()),
        ("MPS executor in this build", "yes" if _C.has_mps_executor() else "no"),
    ] + ([("GPU family of the Metal kernels' block tables", family)] if family else [])
