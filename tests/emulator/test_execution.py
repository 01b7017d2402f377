"""Dispatching: grid geometry (uniform and non-uniform), argument binding, threadgroup memory, worker
threads, and the errors for arguments that do not fit (ValueError / TypeError naming the argument)."""
import ctypes
import itertools
import struct

import pytest
import torch

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def lib(compile_kernels):
    return compile_kernels("execution.metal")


def expected_positions(grid, size):
    """Builtin attributes of every thread of a dispatch_threads(grid, size), from Metal's definitions."""
    groups = [-(-g // s) for g, s in zip(grid, size)]
    rows = {}
    for z, y, x in itertools.product(range(grid[2]), range(grid[1]), range(grid[0])):
        gid = (x, y, z)
        group = tuple(g // s for g, s in zip(gid, size))
        local = tuple(g % s for g, s in zip(gid, size))
        actual = [min(s, g - p * s) for s, g, p in zip(size, grid, group)]  # partial edge threadgroups
        index = (local[2] * actual[1] + local[1]) * actual[0] + local[0]
        threads = actual[0] * actual[1] * actual[2]
        rows[gid] = [*gid, *group, *local, actual[0] * 10000 + actual[1] * 100 + actual[2],
                     groups[0] * 10000 + groups[1] * 100 + groups[2], index, index % 32, index // 32,
                     -(-threads // 32), 32]
    return rows


def check_positions(out, grid, size):
    out = out.view(grid[2], grid[1], grid[0], 16)
    for (x, y, z), row in expected_positions(grid, size).items():
        assert out[z, y, x].tolist() == row, (x, y, z)


def test_uniform_3d_dispatch_positions(lib):
    groups, size = (2, 3, 2), (4, 3, 3)
    grid = tuple(g * s for g, s in zip(groups, size))
    out = torch.zeros(grid[0] * grid[1] * grid[2] * 16, dtype=torch.int32)
    lib.dispatch("positions", {0: out}, groups, size)
    check_positions(out, grid, size)


def test_nonuniform_dispatch_threads_has_partial_threadgroups(lib):
    grid, size = (10, 7, 3), (4, 4, 2)
    out = torch.zeros(10 * 7 * 3 * 16, dtype=torch.int32)
    lib.dispatch_threads("positions", {0: out}, grid, size)
    check_positions(out, grid, size)


def test_partial_last_simdgroup_in_1d(lib):
    out = torch.zeros(40 * 16, dtype=torch.int32)
    lib.dispatch("positions", {0: out}, (1,), (40,))
    check_positions(out, (40, 1, 1), (40, 1, 1))


class Params(ctypes.Structure):
    _fields_ = [("scale", ctypes.c_float), ("count", ctypes.c_uint32), ("offset", ctypes.c_int32 * 2)]


def test_constant_arguments_from_structure_scalar_and_bytes(lib):
    out = torch.zeros(8)
    triple = struct.pack("3f", 1.0, 2.0, 3.0)
    lib.dispatch("constants", {0: Params(0.5, 6, (7, 2)), 1: ctypes.c_float(0.25), 2: triple, 3: out}, (1,), (8,))
    assert out.tolist() == [6 * 0.5 + 5 + 0.25 + 1 + 6 + i for i in range(8)]


def test_constant_argument_smaller_than_its_type_is_a_value_error(lib):
    with pytest.raises(ValueError, match=r"buffer\(0\) for parameter 'p' has 4 bytes, but its type needs 16"):
        lib.dispatch("constants", {0: ctypes.c_float(1), 1: ctypes.c_float(0), 2: bytes(12), 3: torch.zeros(8)}, (1,), (8,))


def test_dynamic_threadgroup_memory(lib):
    x, out = torch.arange(128, dtype=torch.float32), torch.zeros(128)
    lib.dispatch("dynamic_memory", {0: x, 1: out}, (2,), (64,), threadgroup_memory={0: 64 * 4, 1: 64 * 16})
    reversed_slices = torch.cat([x[:64].flip(0), x[64:].flip(0)])
    assert torch.equal(out, 2 * reversed_slices)


def test_dispatch_threads_covers_exactly_the_grid(lib):
    x, out = torch.randn(1000), torch.full((1000,), -1.0)
    lib.dispatch_threads("twice", {0: x, 1: out, 2: ctypes.c_uint32(1000)}, (1000,), (64,))
    assert torch.equal(out, 2 * x)


def test_tensors_are_used_in_place_including_views_with_an_offset(lib):
    base = torch.zeros(300)
    x = torch.randn(100)
    view = base[100:200]  # contiguous, storage offset 100
    lib.dispatch("twice", {0: x, 1: view, 2: ctypes.c_uint32(100)}, (4,), (32,))
    assert torch.equal(base[100:200], 2 * x)
    assert base[:100].abs().sum() == 0 and base[200:].abs().sum() == 0


@pytest.mark.parametrize("os_threads", [1, 2])
def test_threadgroups_spread_over_worker_threads(lib, os_threads):
    x, out = torch.randn(64 * 256), torch.zeros(64)
    lib.dispatch("block_sum", {0: x, 1: out}, (64,), (256,), os_threads=os_threads)
    assert torch.allclose(out.double(), x.double().view(64, 256).sum(1), atol=1e-4)


def test_empty_grid_runs_nothing(lib):
    out = torch.zeros(4)
    lib.dispatch("twice", {0: torch.ones(4), 1: out, 2: ctypes.c_uint32(4)}, (0,), (32,))
    lib.dispatch_threads("twice", {0: torch.ones(4), 1: out, 2: ctypes.c_uint32(4)}, (0, 1), (32,))
    assert out.abs().sum() == 0


def test_kernel_names(lib):
    assert sorted(lib.kernel_names) == ["block_sum", "constants", "copy_vectors", "dynamic_memory", "positions", "twice"]


def test_buffers_must_be_aligned_for_their_element_type(lib):
    x, out = torch.arange(33, dtype=torch.float32), torch.zeros(32)
    lib.dispatch("copy_vectors", {0: x[:32], 1: out}, (1,), (8,))
    assert out.view(8, 4).tolist() == x[:32].view(8, 4).flip(1).tolist()
    with pytest.raises(ValueError, match=r"buffer\(0\) for parameter 'in' is not aligned to the 16 bytes"):
        lib.dispatch("copy_vectors", {0: x[1:], 1: out}, (1,), (8,))  # a float4 at a 4-byte offset


@pytest.mark.parametrize("call,error,pattern", [
    (lambda lib: lib.dispatch("nope", {}, (1,), (1,)), ValueError, "kernel_name: no kernel 'nope'"),
    (lambda lib: lib.dispatch("twice", {0: torch.ones(4), 2: ctypes.c_uint32(4)}, (1,), (4,)), ValueError,
     r"needs buffer 1 \(parameter 'out'\)"),
    (lambda lib: lib.dispatch("twice", {0: torch.ones(4, 2).t(), 1: torch.ones(8), 2: ctypes.c_uint32(4)}, (1,), (4,)),
     ValueError, r"buffers\[0\]: tensor is not contiguous"),
    (lambda lib: lib.dispatch("twice", {0: torch.ones(4), 1: torch.ones(4), 2: 4}, (1,), (4,)), TypeError,
     r"buffers\[2\]: expected a CPU torch.Tensor, bytes or a ctypes value"),
    (lambda lib: lib.dispatch("twice", {31: torch.ones(4)}, (1,), (4,)), ValueError, "not a buffer index"),
    (lambda lib: lib.dispatch("twice", {}, (1, 1, 1, 1), (4,)), ValueError, "threadgroups must be a tuple of 1 to 3"),
    (lambda lib: lib.dispatch("twice", {}, (1,), (0,)), ValueError, "threads_per_threadgroup must hold integers >= 1"),
    (lambda lib: lib.dispatch("dynamic_memory", {0: torch.ones(4), 1: torch.ones(4)}, (1,), (4,),
                              threadgroup_memory={0: 16}), ValueError, r"size of \[\[threadgroup\(1\)\]\]"),
    (lambda lib: lib.dispatch("dynamic_memory", {0: torch.ones(4), 1: torch.ones(4)}, (1,), (4,),
                              threadgroup_memory={0: 16, 1: 20}), ValueError, "multiple of 16 bytes"),
    (lambda lib: lib.dispatch("twice", {0: torch.ones(4), 1: torch.ones(4), 2: ctypes.c_uint32(4)}, (1,), (4,),
                              os_threads=0), ValueError, "os_threads"),
])
def test_bad_arguments_name_the_argument(lib, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(lib)
