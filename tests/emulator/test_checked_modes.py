"""checks="races" and checks="bounds": planted data races and out-of-bounds accesses are reported with
the right source lines, correct kernels pass with their results copied back, and the calling process
survives whatever the kernel does."""
import ctypes

import pytest
import torch

from marked_lines import marked_line
from mfa_torch import emulator

pytestmark = pytest.mark.emulator

SOURCE = "checked.metal"


@pytest.fixture(scope="module")
def races(compile_kernels):
    return compile_kernels(SOURCE, checks="races")


@pytest.fixture(scope="module")
def bounds(compile_kernels):
    return compile_kernels(SOURCE, checks="bounds")


@pytest.fixture(scope="module")
def line():
    return marked_line(SOURCE)


@pytest.mark.parametrize("barrier", [0, 2], ids=["no barrier", "execution-only barrier (mem_none)"])
def test_missing_barrier_is_a_race_on_threadgroup_memory(races, line, barrier):
    out = torch.zeros(64)
    with pytest.raises(emulator.KernelError) as info:
        races.dispatch("neighbour", {0: out, 1: ctypes.c_uint32(barrier)}, (1,), (64,))
    message = str(info.value)
    assert "data race on threadgroup memory" in message
    assert line("tile-read") in message and line("tile-write") in message  # both sides of the race


def test_with_the_barrier_there_is_no_race(races):
    out = torch.zeros(128)
    races.dispatch("neighbour", {0: out, 1: ctypes.c_uint32(1)}, (2,), (64,))
    expected = [g // 64 * 64 + (g % 64 + 63) % 64 for g in range(128)]
    assert out.tolist() == expected  # results come back from the child process


def test_race_on_device_memory(races, line):
    with pytest.raises(emulator.KernelError, match=r"data race on device memory \(buffer\(0\), byte offset 0\)") as info:
        races.dispatch("device_race", {0: torch.zeros(1, dtype=torch.int32)}, (1,), (32,))
    assert line("device-write") in str(info.value)


def test_simd_functions_atomics_and_barriers_are_not_races(races):
    out, count = torch.zeros(64), torch.zeros(1, dtype=torch.int32)
    races.dispatch("synchronised", {0: out, 1: count}, (1,), (64,))
    assert count.item() == 64


def copy_buffers(read_shift, write_shift):
    return {0: torch.arange(32, dtype=torch.float32), 1: torch.zeros(32),
            2: ctypes.c_int32(read_shift), 3: ctypes.c_int32(write_shift)}


def test_out_of_bounds_write(bounds, line):
    with pytest.raises(emulator.KernelError) as info:
        bounds.dispatch("copy_shifted", copy_buffers(0, 1), (1,), (32,))
    message = str(info.value)
    assert message.startswith(line("oob-write") + ": out-of-bounds write of 4 bytes")
    assert "byte offset 128 of buffer(1), which has 128 bytes" in message


def test_out_of_bounds_read(bounds, line):
    with pytest.raises(emulator.KernelError) as info:
        bounds.dispatch("copy_shifted", copy_buffers(-1, 0), (1,), (32,))
    message = str(info.value)
    assert message.startswith(line("oob-read") + ": out-of-bounds read of 4 bytes")
    assert "buffer(0)" not in message or "which has 128 bytes" in message


def test_in_bounds_kernel_passes_and_writes_back(bounds):
    buffers = copy_buffers(0, 0)
    bounds.dispatch("copy_shifted", buffers, (1,), (32,))
    assert torch.equal(buffers[1], buffers[0])


@pytest.mark.parametrize("mode", ["races", "bounds"])
def test_runtime_errors_in_checked_modes(request, line, mode):
    lib = request.getfixturevalue(mode)
    with pytest.raises(emulator.KernelError, match="threads wait at different barriers") as info:
        lib.dispatch("divergent_barrier", {0: torch.zeros(64)}, (1,), (64,))
    assert line("first-barrier") in str(info.value) and line("second-barrier") in str(info.value)


def test_out_of_bounds_threadgroup_array(bounds, line):
    out = torch.zeros(64)
    bounds.dispatch("threadgroup_overflow", {0: out}, (1,), (32,))  # in bounds
    assert out[:32].tolist() == [3.0] * 32
    with pytest.raises(emulator.KernelError) as info:
        bounds.dispatch("threadgroup_overflow", {0: out}, (1,), (33,))
    message = str(info.value)
    assert message.startswith(line("threadgroup-overflow") + ": out-of-bounds write of 4 bytes in threadgroup memory")


@pytest.mark.parametrize("mode", ["races", "bounds"])
def test_a_crashing_kernel_is_reported_and_the_caller_survives(request, line, mode):
    lib = request.getfixturevalue(mode)
    with pytest.raises(emulator.KernelError) as info:
        lib.dispatch("wild_pointer", {0: torch.zeros(32)}, (1,), (32,))
    assert line("wild") in str(info.value)


@pytest.mark.parametrize("mode", ["races", "bounds"])
def test_a_correct_tiled_gemm_passes_the_checked_modes(compile_kernels, mode):
    lib = compile_kernels("whole_kernels.metal", checks=mode)
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 24, generator=gen).half(), torch.randn(24, 48, generator=gen).half()
    c = torch.zeros(40, 48)
    lib.dispatch("gemm_half", {0: a, 1: b, 2: c, 3: (ctypes.c_uint32 * 4)(40, 48, 24, 0)}, (2, 2), (128,))
    assert torch.allclose(c.double(), a.double() @ b.double(), atol=1e-4)
