"""Pins the PyTorch CPU code whose results are the tests' yardsticks (the 2x-PyTorch-error rule). Unpinned it follows
the host: ATen's and oneDNN's AVX2 or AVX-512 kernels, MKL's code path per CPU, the intra-op thread count (summation
orders differ with each). Imported by conftest.py before torch; test_numerics.py checks the pins hold."""
import os
import pathlib

THREADS = 2
_CPUINFO = pathlib.Path("/proc/cpuinfo")
CPU_FLAGS = next((line.split(":", 1)[1].split() for line in _CPUINFO.read_text().splitlines()
                  if line.startswith("flags")), []) if _CPUINFO.exists() else []
ISA = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"} if "avx2" in CPU_FLAGS else {}
for _name, _value in ISA.items():
    os.environ.setdefault(_name, _value)
