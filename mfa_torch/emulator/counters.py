"""Work counters: what every emulated kernel launch does, counted exactly.

    from mfa_torch.emulator import profile
    with mfa_torch.backend("emulator"), profile() as prof:
        out = mfa_torch.scaled_dot_product_attention(q, k, v)
    for launch in prof.launches:  # one dict per kernel launch, in launch order
        print(launch["kernel"], launch["mma"], launch["threadgroup_bytes"] / launch["mma"])

Inside the block, mfa_torch's emulator route compiles its kernels as profile builds (runtime/counters.hpp): the
same source at -O0 with every memory access instrumented, so the counts are the source's as written, whatever the
host compiler would optimise. A library from `emulator.compile(..., profile=True)` is counted too; dispatching a
library compiled without it inside the block is an error (its launches cannot be counted).

Each launch dict holds totals over the launch:
- kernel, defines (the variant), family (the block tables it was planned for, None for direct dispatches),
  threadgroups, threads_per_threadgroup, threadgroup_memory (bytes of threadgroup memory a threadgroup used);
- mma: 8x8x8 simdgroup_multiply_accumulate calls (one per SIMD-group call); mma_by_type: the same by operand
  types, keyed "a*b+c->d" (e.g. "half*half+float->float");
- threadgroup_bytes / threadgroup_accesses: bytes read plus written in threadgroup memory by every thread, and the
  per-thread accesses that moved them; device_bytes / device_accesses and constant_bytes / constant_accesses the
  same for device and constant buffers. An access is one load or store of a scalar or vector by one thread; a
  simdgroup_load or simdgroup_store is one access per lane (32 per SIMD-group) of its two elements;
- barriers: threadgroup_barrier completions, once per threadgroup; shuffles: SIMD-group shuffle and broadcast calls
  and simd_reductions: SIMD-group reductions and scans, once per SIMD-group call;
- transcendentals: per component and thread, calls of the exponential, logarithmic, trigonometric and hyperbolic
  functions, rsqrt, and floating-point divisions (also counted alone as divisions);
- conversions: per component and thread, conversions between float and half or bfloat;
- registers: an estimate of 32-bit registers per thread: the simdgroup_matrix tiles alive at once in a thread
  (2 registers per float tile, 1 per half or bfloat tile: 64 elements over 32 lanes) plus SCALAR_REGISTERS for
  indices, pointers and row statistics; spills: whether that exceeds REGISTER_FILE.
"""
import contextlib
import threading

from .._thread_setting import thread_setting

# Order of the counters in runtime/counters.hpp (enum Counter) and the slots after them.
COUNTERS = ("device_bytes", "device_accesses", "constant_bytes", "constant_accesses", "threadgroup_bytes",
            "threadgroup_accesses", "barriers", "shuffles", "simd_reductions", "transcendentals", "divisions",
            "conversions", "mma")
MMA_TYPES = ("float", "half", "bfloat")
MMA_BY_TYPE_SLOT = 32
TILE_REGISTERS_SLOT = MMA_BY_TYPE_SLOT + len(MMA_TYPES) ** 4
THREADGROUP_MEMORY_SLOT = TILE_REGISTERS_SLOT + 1
PROFILE_SLOTS = THREADGROUP_MEMORY_SLOT + 1

# An allowance, not a count: thread indices, a few 64-bit pointers (2 registers each), loop bounds and a row's
# running max and sum. Apple's GPU ISA addresses at most 128 32-bit registers per thread; more spills to memory
# (Dougall Johnson's G13 ISA notes).
SCALAR_REGISTERS = 24
REGISTER_FILE = 128

_lock = threading.Lock()
_active = []  # open Profile objects: a launch is recorded in each
_context = threading.local()  # the family the executor planned the current launch for


class Profile:
    """The launches counted inside one `with profile()` block."""

    def __init__(self):
        self.launches = []

    def __repr__(self):
        return f"<emulator profile of {len(self.launches)} launches>"


@contextlib.contextmanager
def profile():
    """Count the work of every emulated kernel launch in the block (see the module's docstring)."""
    recorded = Profile()
    with _lock:
        _active.append(recorded)
    try:
        yield recorded
    finally:
        with _lock:
            _active.remove(recorded)


def active():
    """Whether a profile block is open (the emulator route then compiles profile builds)."""
    return bool(_active)


def planned_for(family):
    """Launches in this `with` block were planned for `family` (set by mfa_torch's executor)."""
    return thread_setting(_context, "family", family)


def launch_record(kernel, defines, threadgroups, threads_per_threadgroup, slots):
    """The launch dict of a profile build's launch from its counter slots (the emulator's launch struct)."""
    record = {"kernel": kernel, "defines": dict(defines), "family": getattr(_context, "family", None),
              "threadgroups": tuple(threadgroups), "threads_per_threadgroup": tuple(threads_per_threadgroup),
              "threadgroup_memory": int(slots[THREADGROUP_MEMORY_SLOT])}
    record.update({name: int(slots[i]) for i, name in enumerate(COUNTERS)})
    n = len(MMA_TYPES)
    record["mma_by_type"] = {}
    for index in range(n ** 4):
        count = int(slots[MMA_BY_TYPE_SLOT + index])
        if count:
            a, b, c, d = (MMA_TYPES[index // n ** p % n] for p in (3, 2, 1, 0))
            record["mma_by_type"][f"{a}*{b}+{c}->{d}"] = count
    record["registers"] = int(slots[TILE_REGISTERS_SLOT]) + SCALAR_REGISTERS
    record["spills"] = record["registers"] > REGISTER_FILE
    return record


def record(launch):
    with _lock:
        for p in _active:
            p.launches.append(launch)
