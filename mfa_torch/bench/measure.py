"""Timing: the median of repeated samples after a warm-up call, each sample ending with a wait for the device."""
import dataclasses
import math
import statistics
import time


@dataclasses.dataclass(frozen=True)
class TimingSettings:
    sample_seconds: float = 0.01  # calls per sample are batched up to this, as MFA batches small commands
    min_samples: int = 5
    min_seconds: float = 0.3  # keep sampling short calls for at least this long
    max_samples: int = 50
    max_calls_per_sample: int = 64
    case_seconds: float = 20.0  # slow calls: stop after this long once 3 samples are in


QUICK = TimingSettings(min_samples=3, min_seconds=0.1, max_samples=10, case_seconds=5.0)


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    samples: int
    calls_per_sample: int
    extra_memory: int  # bytes, or None where the device has no allocator statistics


def _seconds(framework, fn, calls):
    start = time.perf_counter()
    framework.run(fn, calls)
    return time.perf_counter() - start


def _enough(samples, settings, elapsed):
    if len(samples) >= settings.max_samples:
        return True
    if len(samples) >= 3 and elapsed >= settings.case_seconds:
        return True
    return len(samples) >= settings.min_samples and elapsed >= settings.min_seconds


def time_call(call, settings):
    """Median time of one call, in milliseconds. The first call warms up (compiles kernels, fills the allocator's
    caches) and measures memory; a second, timed alone, sizes the samples: short calls are batched so that a sample
    lasts about `sample_seconds` (per-call overhead of the wait is then amortised) and divided by the batch."""
    extra_memory = call.framework.extra_memory(call.fn)
    probe = _seconds(call.framework, call.fn, 1)
    calls = min(settings.max_calls_per_sample, max(1, math.ceil(settings.sample_seconds / max(probe, 1e-9))))
    samples = [probe] if calls == 1 else []
    start = time.perf_counter()
    while not _enough(samples, settings, time.perf_counter() - start):
        samples.append(_seconds(call.framework, call.fn, calls) / calls)
    return Timing(statistics.median(samples) * 1e3, len(samples), calls, extra_memory)
