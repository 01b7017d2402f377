"""Work counters of profile builds: exact counts on kernels whose work is known by hand (kernels/counters.metal),
counts that do not depend on the host's threads, and results equal to the optimised build's."""
import ctypes

import pytest
import torch

from mfa_torch import emulator
from mfa_torch.emulator import counters, profile


@pytest.fixture(scope="module")
def lib(compile_kernels):
    return compile_kernels("counters.metal", profile=True)


def _run(lib, kernel, buffers, groups, threads, **options):
    with profile() as prof:
        lib.dispatch(kernel, buffers, groups, threads, **options)
    assert len(prof.launches) == 1 and prof.launches[0] is lib.last_profile
    return prof.launches[0]


def test_scalar_and_vector_accesses_each_count_once(lib):
    n = 96  # 3 threadgroups of 32
    h, f, s = torch.randn(n, 4).half(), torch.randn(n, 4), torch.randn(n)
    out2, out1 = torch.zeros(n, 2), torch.zeros(n)
    r = _run(lib, "vector_accesses", {0: h, 1: f, 2: s, 3: out2, 4: out1, 5: ctypes.c_float(0.5)}, (3,), (32,))
    # per thread: half4 (8) + float4 (16) + float (4) loads, float2 (8) + float (4) stores
    assert (r["device_accesses"], r["device_bytes"]) == (5 * n, 40 * n)
    assert (r["constant_accesses"], r["constant_bytes"]) == (n, 4 * n)
    assert (r["threadgroup_accesses"], r["barriers"], r["mma"]) == (0, 0, 0)
    assert torch.equal(out2, torch.stack([f[:, 0] + s, f[:, 3]], 1) * 0.5)
    assert torch.equal(out1, h[:, 1].float())
    assert (r["kernel"], r["threadgroups"], r["threads_per_threadgroup"], r["family"]) == \
        ("vector_accesses", (3, 1, 1), (32, 1, 1), None)


def test_threadgroup_accesses_and_barriers(lib):
    n = 192  # 3 threadgroups of 64
    x, out = torch.randn(n), torch.zeros(n)
    r = _run(lib, "staged", {0: x, 1: out}, (3,), (64,))
    # per thread: 2 threadgroup stores + 2 loads of 4 bytes; 1 device load + 1 store; 2 barriers per threadgroup
    assert (r["threadgroup_accesses"], r["threadgroup_bytes"]) == (4 * n, 16 * n)
    assert (r["device_accesses"], r["device_bytes"]) == (2 * n, 8 * n)
    assert r["barriers"] == 2 * 3
    assert r["threadgroup_memory"] == 256
    assert torch.equal(out, x.view(3, 64).flip(1).reshape(-1) * 2)


def test_simdgroup_matrix_loads_products_and_live_tiles(lib):
    a, b = torch.randn(8, 8).half(), torch.randn(8, 8).half()
    c = torch.zeros(8, 8)
    r = _run(lib, "tiles", {0: a, 1: b, 2: c}, (1,), (32,))
    # two half loads from device (32 lanes x 4 bytes each), one float store (32 x 8); one store to and one load
    # from threadgroup memory (32 x 4 each)
    assert (r["device_accesses"], r["device_bytes"]) == (3 * 32, 2 * 128 + 256)
    assert (r["threadgroup_accesses"], r["threadgroup_bytes"]) == (2 * 32, 2 * 128)
    assert r["mma"] == 2 and r["mma_by_type"] == {"half*half+float->float": 2}
    assert r["registers"] == 1 + 1 + 2 + 2 + counters.SCALAR_REGISTERS and not r["spills"]
    product = a.double() @ b.double()
    assert torch.allclose(c.double(), product + product, atol=1e-2)


def test_transcendentals_divisions_conversions_and_simd_functions(lib):
    n = 64  # 2 SIMD-groups
    x, out, quotients = torch.rand(n), torch.zeros(n), torch.zeros(n, dtype=torch.int32)
    r = _run(lib, "math_and_simd", {0: x, 1: out, 2: quotients}, (1,), (64,))
    assert (r["transcendentals"], r["divisions"], r["conversions"]) == (8 * n, 2 * n, 2 * n)
    assert (r["shuffles"], r["simd_reductions"]) == (2, 2)
    # rewriting divisions for counting keeps integer division C++'s: truncation towards zero
    assert torch.equal(quotients, torch.arange(n, dtype=torch.int32) // 3 - 3)


def test_conversions_count_16_bit_float_boundaries(lib):
    n = 32
    h, out = torch.randn(n, 2).half(), torch.zeros(n).half()
    b, bout = torch.randn(n).bfloat16(), torch.zeros(n).bfloat16()
    r = _run(lib, "conversions", {0: h, 1: out, 2: b, 3: bout}, (1,), (32,))
    assert r["conversions"] == (4 + 3) * n
    assert torch.equal(bout, (b.float() * 2).bfloat16())


def test_atomics_are_one_access_each(lib):
    counter = torch.zeros(1, dtype=torch.int32)
    r = _run(lib, "atomics", {0: counter}, (4,), (64,))
    assert (r["device_accesses"], r["device_bytes"]) == (256, 256 * 8)
    assert counter.item() == sum(range(256))


def test_counts_do_not_depend_on_worker_threads(lib):
    x = torch.randn(192)
    one = _run(lib, "staged", {0: x, 1: torch.zeros(192)}, (3,), (64,), os_threads=1)
    two = _run(lib, "staged", {0: x, 1: torch.zeros(192)}, (3,), (64,), os_threads=2)
    assert one == two


def test_nested_blocks_both_record_and_unprofiled_libraries_are_refused(lib, compile_kernels):
    x = torch.randn(64)
    with profile() as outer:
        with profile() as inner:
            lib.dispatch("staged", {0: x, 1: torch.zeros(64)}, (1,), (64,))
        lib.dispatch("staged", {0: x, 1: torch.zeros(64)}, (1,), (64,))
    assert len(inner.launches) == 1 and len(outer.launches) == 2
    plain = compile_kernels("counters.metal")
    with profile(), pytest.raises(ValueError, match="profile=True"):
        plain.dispatch("staged", {0: x, 1: torch.zeros(64)}, (1,), (64,))
    with pytest.raises(ValueError, match="checks=None"):
        emulator.compile(lib.filename, checks="bounds", profile=True)
