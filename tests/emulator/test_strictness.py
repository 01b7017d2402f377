"""Planted bugs: each must be reported as a KernelError naming the .metal file, the line and what
happened (kernels/planted_bugs.metal marks the expected lines with `mark: <name>`)."""
import ctypes
import math
import re

import pytest
import torch

from marked_lines import marked_line
from mfa_torch import emulator

pytestmark = pytest.mark.emulator

SOURCE = "planted_bugs.metal"


@pytest.fixture(scope="module")
def lib(compile_kernels):
    return compile_kernels(SOURCE)


@pytest.fixture(scope="module")
def line():
    return marked_line(SOURCE)


def kernel_error(lib, kernel, threads, buffers=None, **options):
    out = torch.zeros(1024)
    with pytest.raises(emulator.KernelError) as info:
        lib.dispatch(kernel, buffers or {0: out}, (1,), (threads,), **options)
    return str(info.value)


def test_threads_at_different_barriers(lib, line):
    message = kernel_error(lib, "divergent_barrier", 64)
    assert "different barriers" in message
    assert line("divergent-first") in message and line("divergent-second") in message


def test_thread_returning_while_others_wait_at_a_barrier(lib, line):
    message = kernel_error(lib, "early_return", 64)
    assert re.search(r"thread 5 .*returned while other threads wait at threadgroup_barrier", message)
    assert line("early-return") in message


def test_barrier_in_a_loop_with_different_trip_counts(lib, line):
    message = kernel_error(lib, "barrier_in_divergent_loop", 64)
    assert "returned while other threads wait" in message and line("loop-barrier") in message


def test_simd_function_reached_by_part_of_the_simdgroup(lib, line):
    message = kernel_error(lib, "partial_simd", 64)
    assert f"{line('partial-simd')}: simd_sum reached by only part of SIMD-group 0 (lanes 0-15)" in message
    assert "lanes 16-31 are live but wait at threadgroup_barrier at " + line("partial-simd-barrier") in message


def test_permissive_mode_runs_divergent_simd_functions_over_the_active_lanes(lib):
    out = torch.zeros(64)
    lib.dispatch("partial_simd", {0: out}, (1,), (64,), strict=False)
    expected = [16.0 if t % 32 < 16 else 1.0 for t in range(64)]
    assert out.tolist() == expected


def test_lanes_at_different_simd_functions(lib, line):
    message = kernel_error(lib, "different_simd_functions", 32)
    assert "wait at different SIMD-group functions" in message
    assert line("simd-first") in message and line("simd-second") in message


def test_static_threadgroup_memory_over_32_kib(lib, line):
    message = kernel_error(lib, "too_much_threadgroup_memory", 32)
    assert message.startswith(line("33-kib") + ": threadgroup memory exceeds 32 KiB")
    assert "33792 bytes" in message


def test_static_plus_dynamic_threadgroup_memory_over_32_kib(lib, line):
    out = torch.zeros(64)
    lib.dispatch("static_plus_dynamic", {0: out}, (1,), (64,), threadgroup_memory={0: 16384})  # exactly 32 KiB
    assert out.tolist() == [3.0] * 64
    message = kernel_error(lib, "static_plus_dynamic", 64, threadgroup_memory={0: 16400})
    assert message.startswith(line("static-plus-dynamic") + ": threadgroup memory exceeds 32 KiB")


def test_dynamic_threadgroup_memory_over_32_kib(lib):
    message = kernel_error(lib, "static_plus_dynamic", 64, threadgroup_memory={0: 32784})
    assert f"{SOURCE}:" in message and "dynamic threadgroup memory" in message and "32768" in message


def test_more_than_1024_threads_per_threadgroup(lib):
    message = kernel_error(lib, "early_return", 1025)
    assert "1025 threads exceeds the limit of 1024" in message and f"{SOURCE}:" in message


def test_uninitialised_threadgroup_memory_reads_poison(lib):
    out, iout = torch.zeros(64), torch.zeros(64, dtype=torch.int32)
    lib.dispatch("uninitialised_read", {0: out, 1: iout}, (1,), (64,))
    assert out[:32].tolist() == [1.0] * 32
    assert all(math.isnan(v) for v in out[32:].tolist())
    assert iout.tolist() == [-1] * 64


def test_poison_is_renewed_for_every_threadgroup(lib):
    out, iout = torch.zeros(64 * 4), torch.zeros(64 * 4, dtype=torch.int32)
    lib.dispatch("uninitialised_read", {0: out, 1: iout}, (4,), (64,), os_threads=1)  # one worker reuses memory
    assert out[:32].tolist() == [1.0] * 32
    assert all(math.isnan(v) for v in out[64:].tolist())  # threadgroup 0's writes are gone


def test_broadcast_from_a_lane_that_differs_between_lanes(lib, line):
    message = kernel_error(lib, "nonuniform_broadcast", 32)
    assert line("broadcast") in message and "simd_broadcast" in message and "differs between lanes" in message


def test_wild_pointer_is_an_error_not_a_crash(lib, line):
    message = kernel_error(lib, "wild_pointer", 32)
    assert "invalid memory access" in message
    assert line("wild-pointer") in message
    out = torch.zeros(64)  # and the process, and the library, still work
    lib.dispatch("early_return", {0: out}, (1,), (1,))


def test_matrix_product_needs_a_full_simdgroup(lib, line):
    message = kernel_error(lib, "partial_matrix", 16)
    assert line("partial-matrix") in message and "needs all 32 lanes" in message


def test_integer_division_by_zero_is_an_error_not_a_crash(lib, line):
    out = torch.zeros(32, dtype=torch.int32)
    lib.dispatch("integer_division", {0: out, 1: ctypes.c_int32(7)}, (1,), (32,))
    assert out.tolist() == [14] * 32
    message = kernel_error(lib, "integer_division", 32, {0: out, 1: ctypes.c_int32(0)})
    assert "arithmetic exception" in message and line("division") in message


def test_endless_loop_times_out_with_its_location(lib, line):
    flag = torch.zeros(1, dtype=torch.int32)
    message = kernel_error(lib, "endless_spin", 32, {0: flag}, timeout=0.5)
    assert "did not finish within 0.5 s" in message and line("spin") in message
    flag[0] = 1
    lib.dispatch("endless_spin", {0: flag}, (1,), (32,), timeout=5)  # finishes: no error


def test_faults_in_two_libraries_of_one_process(lib, line):
    other = emulator.compile(
        "#include <metal_stdlib>\nusing namespace metal;\n"
        "kernel void wild(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  out[i] = ((device float*)(64))[i];\n}\n", filename="other.metal")
    for _ in range(2):  # each library's fault handler passes the other's faults on
        with pytest.raises(emulator.KernelError, match=r"other\.metal:4: invalid memory access"):
            other.dispatch("wild", {0: torch.zeros(32)}, (1,), (32,))
        assert line("wild-pointer") in kernel_error(lib, "wild_pointer", 32)


@pytest.mark.parametrize("kernel,mark", [("transposed_load_at_origin", "transposed-load-origin"),
                                         ("transposed_store_at_origin", "transposed-store-origin")])
def test_transposed_matrix_access_with_a_non_zero_origin(lib, line, kernel, mark):
    message = kernel_error(lib, kernel, 32)
    operation = kernel.split("_")[1]
    assert message.startswith(f"{line(mark)}: simdgroup_{operation}: transpose_matrix with a non-zero matrix_origin")
    assert "offset the pointer and pass origin 0" in message


def test_more_threads_than_the_kernels_max_total_threads_per_threadgroup(lib, line):
    out = torch.zeros(64)
    lib.dispatch("limited_to_64_threads", {0: out}, (1,), (8, 8))  # exactly the limit
    assert out.tolist() == [1.0] * 64
    message = kernel_error(lib, "limited_to_64_threads", 65)
    assert message.startswith(line("limited-kernel") + ": kernel limited_to_64_threads:")
    assert "65 threads exceeds the kernel's max_total_threads_per_threadgroup of 64" in message


@pytest.mark.parametrize("limit", ["0", "1025"])
def test_max_total_threads_per_threadgroup_outside_what_metal_allows(limit):
    source = (f"[[max_total_threads_per_threadgroup({limit})]]\n"
              "kernel void k(device float* out [[buffer(0)]]) {}\n")
    with pytest.raises(emulator.CompileError, match=rf"limits\.metal:2: max_total_threads_per_threadgroup\({limit}\) "
                                                    r"is outside 1\.\.1024"):
        emulator.compile("#include <metal_stdlib>\n" + source, filename="limits.metal")


def test_bfloat_to_bool_conversion_does_not_compile():
    source = ("#include <metal_stdlib>\nusing namespace metal;\n"
              "kernel void k(device const bfloat* x [[buffer(0)]], device float* out [[buffer(1)]]) {\n"
              "  out[0] = bool(x[0]) ? 1.0f : 0.0f;\n}\n")
    with pytest.raises(emulator.CompileError, match=r"to_bool\.metal:4:.*deleted"):
        emulator.compile(source, filename="to_bool.metal")
