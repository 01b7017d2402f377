"""Each MSL builtin against its documented semantics (Apple's MSL specification, facts/metal.md).

Kernels are in kernels/builtins.metal; every expected value is computed here, in Python or in torch
float64, never by the emulator.
"""
import ctypes
import math
import struct

import pytest
import torch

from mfa_torch import emulator

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def lib(compile_kernels):
    return compile_kernels("builtins.metal")


def sgm_position(lane):
    """(row, col) of thread_elements()[0] of `lane` (facts/metal.md)."""
    return ((lane >> 4) & 1) * 4 + ((lane >> 1) & 3), ((lane >> 3) & 1) * 4 + (lane & 1) * 2


# ---- simdgroup_matrix -------------------------------------------------------------------------------


def test_matrix_lane_layout(lib):
    src, out = torch.arange(64, dtype=torch.float32), torch.zeros(64)
    lib.dispatch("matrix_layout", {0: src, 1: out}, (1,), (32,))
    for lane in range(32):
        r, c = sgm_position(lane)
        assert out[2 * lane].item() == r * 8 + c
        assert out[2 * lane + 1].item() == r * 8 + c + 1


def load_store_reference(src, load, store):
    """The tile loaded from a 16x16 matrix with (x, y, transpose, stride), stored the same way."""
    lx, ly, lt, ls = load
    sx, sy, st, ss = store
    tile = torch.empty(8, 8)
    for r in range(8):
        for c in range(8):
            tile[r, c] = src[(lx + c) * ls + ly + r] if lt else src[(ly + r) * ls + lx + c]
    dst = torch.full((256,), -1.0)
    for r in range(8):
        for c in range(8):
            dst[(sx + c) * ss + sy + r if st else (sy + r) * ss + sx + c] = tile[r, c]
    return dst


@pytest.mark.parametrize("load,store", [
    ((0, 0, 0, 8), (0, 0, 0, 8)),
    ((3, 5, 0, 16), (8, 1, 0, 16)),
    ((0, 0, 1, 16), (2, 7, 0, 16)),
    ((4, 6, 0, 16), (0, 0, 1, 16)),
    ((0, 0, 1, 16), (0, 0, 1, 16)),
])
def test_matrix_load_store_origin_and_transpose(lib, load, store):
    # transposed only at origin 0: Metal leaves an origin with a transpose unspecified (the emulator rejects it)
    src, dst = torch.arange(256, dtype=torch.float32), torch.full((256,), -1.0)
    params = (ctypes.c_uint32 * 8)(*load, *store)
    lib.dispatch("matrix_load_store", {0: src, 1: dst, 2: params}, (1,), (32,))
    assert torch.equal(dst, load_store_reference(src, load, store))


@pytest.mark.parametrize("load,store,operation", [
    ((2, 7, 1, 16), (0, 0, 0, 16), "simdgroup_load"),  # from threadgroup memory
    ((0, 0, 0, 16), (1, 0, 1, 16), "simdgroup_store"),  # to device memory
])
def test_matrix_transpose_with_a_non_zero_origin_is_rejected(lib, load, store, operation):
    params = (ctypes.c_uint32 * 8)(*load, *store)
    with pytest.raises(emulator.KernelError, match=f"{operation}: transpose_matrix with a non-zero matrix_origin"):
        lib.dispatch("matrix_load_store", {0: torch.zeros(256), 1: torch.zeros(256), 2: params}, (1,), (32,))


@pytest.mark.parametrize("dtype,name,tolerance", [
    (torch.float32, "matrix_mma_float", 1e-6),
    (torch.float16, "matrix_mma_half", 2**-10),
    (torch.bfloat16, "matrix_mma_bfloat", 2**-7),
])
def test_matrix_multiply_accumulate(lib, dtype, name, tolerance):
    gen = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(8, 8, generator=gen).to(dtype) for _ in range(3))
    d = torch.zeros(8, 8, dtype=dtype)
    lib.dispatch(name, {0: a, 1: b, 2: c, 3: d}, (1,), (32,))
    reference = a.double() @ b.double() + c.double()
    # one rounding to the element type (Apple's unit may round differently: compare within one ulp)
    assert torch.allclose(d.double(), reference, rtol=tolerance, atol=tolerance)


def test_matrix_diagonal_constructor(lib):
    a, d = torch.randn(64), torch.zeros(64)
    lib.dispatch("matrix_diagonal", {0: a, 1: d}, (1,), (32,))
    assert torch.equal(d, 2 * a)


# ---- shuffles -------------------------------------------------------------------------------------------


def shuffle_reference():
    x = [100 + lane for lane in range(32)]
    fill = [200 + lane for lane in range(32)]

    def and_fill_up(delta, modulo=32):
        out = []
        for lane in range(32):
            base, k = lane - lane % modulo, lane % modulo
            out.append(x[base + k - delta] if k >= delta else fill[base + modulo - delta + k])
        return out

    def and_fill_down(delta, modulo=32):
        out = []
        for lane in range(32):
            base, k = lane - lane % modulo, lane % modulo
            out.append(x[base + k + delta] if k + delta < modulo else fill[base + k + delta - modulo])
        return out

    return [
        [x[(lane * 7) % 32] for lane in range(32)],
        [x[lane ^ 5] for lane in range(32)],
        [x[lane - 3] if lane >= 3 else x[lane] for lane in range(32)],  # no wrap: keep own value
        [x[lane + 3] if lane + 3 < 32 else x[lane] for lane in range(32)],
        [x[(lane - 3) % 32] for lane in range(32)],
        [x[(lane + 3) % 32] for lane in range(32)],
        [x[7]] * 32,
        [x[0]] * 32,
        and_fill_up(3),
        and_fill_down(3),
        and_fill_up(2, 8),
        and_fill_down(2, 8),
    ]


def test_shuffle_variants_at_edge_lanes(lib):
    out = torch.zeros(12 * 32, dtype=torch.int32)
    lib.dispatch("shuffles", {0: out}, (1,), (32,))
    names = ["shuffle", "xor", "up", "down", "rotate_up", "rotate_down", "broadcast", "broadcast_first",
             "and_fill_up", "and_fill_down", "and_fill_up modulo 8", "and_fill_down modulo 8"]
    for name, row, expected in zip(names, out.view(12, 32).tolist(), shuffle_reference()):
        assert row == expected, name


def test_and_fill_up_matches_the_documented_example(lib):
    # Apple's example: data {a..h}, filling {s..z}, delta 2, modulo 8 -> {y, z, a, b, c, d, e, f}
    out = torch.zeros(12 * 32, dtype=torch.int32)
    lib.dispatch("shuffles", {0: out}, (1,), (32,))
    row = out.view(12, 32)[10, :8].tolist()
    assert row == [206, 207, 100, 101, 102, 103, 104, 105]


def test_shuffle_of_a_vector(lib):
    out = torch.zeros(32, 4)
    lib.dispatch("shuffle_vectors", {0: out}, (1,), (32,))
    for lane in range(32):
        src = lane ^ 31
        assert out[lane].tolist() == [src, 2 * src, -src, 0.5]


# ---- reductions, scans and votes ----------------------------------------------------------------------


def test_reductions_and_scans_over_active_lanes_of_partial_simdgroups(lib):
    out = torch.full((16 * 64,), -1, dtype=torch.int32)
    votes = torch.zeros(2 * 64, dtype=torch.int32)
    lib.dispatch("reductions", {0: out, 1: votes}, (1,), (40,))
    out = out.view(16, 64)
    votes = votes.long() % (1 << 32)
    for simdgroup, lanes in ((0, range(32)), (1, range(8))):
        active = [lane for lane in lanes if lane % 5 != 4]
        xs = {lane: lane + 1 for lane in active}
        ys = {lane: lane % 3 + 1 for lane in active}
        for lane in active:
            tid = simdgroup * 32 + lane
            before = [other for other in active if other < lane]
            expected = [
                sum(xs.values()), math.prod(ys.values()), min(xs.values()), max(xs.values()),
                _fold(xs.values(), lambda a, b: a & b), _fold(xs.values(), lambda a, b: a | b),
                _fold(xs.values(), lambda a, b: a ^ b),
                sum(xs[o] for o in before) + xs[lane], sum(xs[o] for o in before),
                math.prod(ys[o] for o in before) * ys[lane], math.prod(ys[o] for o in before),
                1, int(all(v > 1 for v in xs.values())), int(3 in xs.values()), 0, int(lane == active[0]),
            ]
            assert out[:, tid].tolist() == expected, (simdgroup, lane)
            ballot = sum(1 << o for o in active if o % 2 == 0)
            mask = sum(1 << o for o in active)
            assert votes[2 * tid].item() == ballot and votes[2 * tid + 1].item() == mask
        for lane in lanes:
            if lane % 5 == 4:
                assert out[0, simdgroup * 32 + lane].item() == -1  # returned early: wrote nothing


def _fold(values, op):
    values = list(values)
    result = values[0]
    for v in values[1:]:
        result = op(result, v)
    return result


def test_float_sum_of_a_partial_simdgroup(lib):
    x, out = torch.randn(20), torch.zeros(20)
    lib.dispatch("float_sum", {0: x, 1: out}, (1,), (20,))
    assert torch.allclose(out.double(), x.double().sum().expand(20), atol=1e-5)
    assert len(set(out.tolist())) == 1  # bit-identical in every lane


# ---- quad-groups ----------------------------------------------------------------------------------------


def test_quad_functions(lib):
    out = torch.zeros(14 * 32, dtype=torch.int32)
    lib.dispatch("quads", {0: out}, (1,), (32,))
    out = out.view(14, 32)
    for lane in range(32):
        base, q = lane - lane % 4, lane % 4
        x = [10 + base + i for i in range(4)]
        expected = [
            x[3 - q], x[q ^ 1], x[q - 1] if q >= 1 else x[q], x[q + 1] if q + 1 < 4 else x[q],
            x[(q - 1) % 4], x[(q + 1) % 4], x[2], sum(x), min(x), sum(x[:q]),
            x[q - 1] if q >= 1 else -x[3], 0b1101, 1, int(q == 0),
        ]
        assert out[:, lane].tolist() == expected, lane


# ---- vectors ----------------------------------------------------------------------------------------------


def test_swizzle_reads_and_writes(lib):
    out, iout = torch.zeros(13), torch.zeros(8, dtype=torch.int32)
    lib.dispatch("swizzles", {0: out, 1: iout}, (1,), (1,))
    assert out[:4].tolist() == [30, 3, 10, 5]
    assert out[4:8].tolist() == [90, 8, 20, 6]
    assert out[8:12].tolist() == [1.5, 1.5, 3, 1.5]
    assert iout.tolist() == [2, 2, -3, 1, 0, 0, 1, 16 + 48]  # C remainder keeps the sign
    assert out[12].item() == 2 + 10 * 1 + 100 * 2 + 1000 * 1


def test_vector_sizes_and_alignments(lib):
    out = torch.zeros(20, dtype=torch.int32)
    lib.dispatch("type_sizes", {0: out}, (1,), (1,))
    assert out.tolist() == [8, 8, 16, 16, 16, 16, 12, 4, 8, 8, 8, 8, 2, 4, 4, 8, 16, 16, 6, 8]


def test_vector_array_strides(lib):
    a, p, out = torch.arange(16, dtype=torch.float32), torch.arange(16, dtype=torch.float32), torch.zeros(3)
    lib.dispatch("vector_strides", {0: a, 1: p, 2: out}, (1,), (1,))
    assert out.tolist() == [4, 3, 8]


# ---- half and bfloat -------------------------------------------------------------------------------------


def test_half_rounds_every_operation(lib):
    out = torch.zeros(4)
    lib.dispatch("half_rounding", {0: out}, (1,), (1,))
    assert out[0].item() == 0.0  # 2048 + 1 - 2048 == 0 in half
    assert out[1].item() == 1.0  # and 1 in float
    assert out[2].item() == float(torch.tensor(1 / 3).half())
    assert out[3].item() == math.inf


@pytest.mark.parametrize("name,dtype", [("half_arithmetic", torch.float16), ("bfloat_arithmetic", torch.bfloat16)])
def test_narrow_types_round_to_nearest_even_at_each_operation(lib, name, dtype):
    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(4096, generator=gen) * 50 for _ in range(3))
    # ties: float values exactly halfway between two representable values of the narrow type
    a[:8] = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-11), 65520.0, 3e38, float("nan")])
    d, converted = torch.zeros(4096, dtype=dtype), torch.zeros(4096, dtype=dtype)
    lib.dispatch(name, {0: a, 1: b, 2: c, 3: d, 4: converted}, (4096 // 256,), (256,))
    # torch's CPU float16 / bfloat16 arithmetic computes in float and rounds each result to nearest even
    expected = a.to(dtype) * b.to(dtype) + c.to(dtype)
    assert torch.equal(converted.view(torch.int16)[8:], a.to(dtype).view(torch.int16)[8:])
    assert torch.equal(converted[:7].view(torch.int16), a[:7].to(dtype).view(torch.int16))
    assert math.isnan(converted[7].item())
    assert torch.equal(d[8:].view(torch.int16), expected[8:].view(torch.int16))


# ---- math ----------------------------------------------------------------------------------------------------


def test_math_functions_in_float(lib):
    x = torch.cat([torch.linspace(-4, 4, 250), torch.tensor([0.0, -0.0, 1e-30, 2.5, -2.5, 88.0])])
    n = len(x)
    out, hout = torch.zeros(25 * n), torch.zeros(n, dtype=torch.float16)
    lib.dispatch_threads("math_float", {0: x, 1: out, 2: hout}, (n,), (64,))
    xd = x.double()
    # arguments the kernel computes in float are rounded to float before the fp64 function
    shifted = (x.abs() + 1).double()
    expected = [
        xd.exp(), torch.exp2(xd), shifted.log(), shifted.log2(), xd.tanh(), xd.abs().sqrt(), shifted.rsqrt(), xd.exp(),
        xd.exp(), xd.abs(), xd * xd + 1, xd.clamp(-1, 1), (x + (2 - x) * 0.25).double(), xd.sign(), xd - xd.floor(),
        xd.clamp(min=0.5), xd.clamp(max=0.5), torch.isnan(xd / 0).double(), torch.isinf(xd / 0).double(), xd / 3,
        shifted.rsqrt(), xd.floor(), xd.ceil(), (xd >= 0).double(), xd.clamp(0, 1),
    ]
    got = out.view(25, n).double()
    for k, e in enumerate(expected):  # float results within a few ulp of the exact value
        assert torch.allclose(got[k], e, rtol=3e-7, atol=1e-37, equal_nan=True), k
    assert torch.equal(hout, x.half().float().exp().half())  # exp(half): the argument is a half


def test_transcendentals_are_the_nearest_float_on_every_host(lib):
    """exp, exp2, log, log2 and tanh give the float nearest the exact value (the host's double function rounded
    once), bit for bit: not the host C library's float functions, whose last bit depends on its version and on
    the FMA variant it picks for the CPU (this made the emulator's results host-dependent)."""
    g = torch.Generator().manual_seed(21)
    x = torch.cat([torch.randn(3000, generator=g) * 30, torch.tensor([0.0, -0.0, 1e-30, 88.0, -87.0, 1e4, -1e4])])
    n = len(x)
    out, hout = torch.zeros(25 * n), torch.zeros(n, dtype=torch.float16)
    lib.dispatch_threads("math_float", {0: x, 1: out, 2: hout}, (n,), (64,))
    got = out.view(25, n)
    shifted = (x.abs() + 1).tolist()
    nearest = lambda f, values: torch.tensor([f(v) for v in values], dtype=torch.float64).float()  # noqa: E731
    expected = {0: nearest(lambda v: _overflowing(math.exp, v), x.tolist()),
                1: nearest(lambda v: _overflowing(lambda y: 2.0 ** y, v), x.tolist()),
                2: nearest(math.log, shifted), 3: nearest(math.log2, shifted), 4: nearest(math.tanh, x.tolist())}
    for k, want in expected.items():
        assert torch.equal(got[k].view(torch.int32), want.view(torch.int32)), ["exp", "exp2", "log", "log2", "tanh"][k]


def _overflowing(f, v):
    try:
        return f(v)
    except OverflowError:
        return math.inf


def test_math_on_vectors(lib):
    x = torch.randn(16, 4)
    out = torch.zeros(48, 4)
    lib.dispatch("math_vectors", {0: x, 1: out}, (1,), (16,))
    out = out.view(16, 3, 4).double()
    xd = x.double()
    assert torch.allclose(out[:, 0], xd.exp() + xd.clamp(min=0), rtol=1e-6)
    assert torch.allclose(out[:, 1, 0], (xd * xd).sum(1), rtol=1e-6)
    assert torch.allclose(out[:, 1, 1], xd[:, :2].norm(dim=1), rtol=1e-6)
    assert torch.allclose(out[:, 1, 2], xd[:, 2].clamp(0, 1))
    assert torch.equal(out[:, 1, 3], torch.where(xd[:, 3] > 0, 2.0, 1.0).double())
    assert torch.allclose(out[:, 2], (xd + 1) / 2 + xd.abs(), rtol=1e-6)


def integer_reference(u):
    s = u - (1 << 32) if u >= 1 << 31 else u
    wrap = lambda v: v % (1 << 32)  # noqa: E731
    sat_u = lambda v: min(max(v, 0), (1 << 32) - 1)  # noqa: E731
    sat_s = lambda v: min(max(v, -(1 << 31)), (1 << 31) - 1)  # noqa: E731
    rev = int(f"{u:032b}"[::-1], 2)
    nibble = (s >> 28)  # arithmetic shift: extract_bits of a signed value sign-extends
    return [
        32 - u.bit_length(), (u & -u).bit_length() - 1 if u else 32, bin(u).count("1"), (u * 0x9E3779B9) >> 32,
        wrap((s * -7) >> 32), abs(s - 5), sat_u(u + 0xF0000000), sat_u(u - 1000), wrap(sat_s(s + 0x7FFFFFF0)),
        ((u << 7) | (u >> 25)) & 0xFFFFFFFF, rev, (u >> 4) & 0xFF, wrap(nibble), (u & ~0xFF00) | (0xAB << 8),
        wrap(max(s, -5)), min(u, 100), wrap(abs(s)), wrap(min(max(s, -10), 10)),
    ]


def test_integer_helpers(lib):
    values = [0, 1, 5, 6, 0x80000000, 0xFFFFFFFF, 0x12345678, 0xF0F0F0F1, 1000, 999, 0x7FFFFFFF, 0xFFFFFFF0]
    x = torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in values], dtype=torch.int32)
    n = len(values)
    out = torch.zeros(18 * n, dtype=torch.int32)
    lib.dispatch_threads("integers", {0: x, 1: out}, (n,), (32,))
    got = (out.view(18, n).long() % (1 << 32)).tolist()
    for i, u in enumerate(values):
        assert [row[i] for row in got] == integer_reference(u), hex(u)


def test_as_type_reinterprets_bits(lib):
    out = torch.zeros(5, dtype=torch.int32)
    lib.dispatch("as_types", {0: out}, (1,), (1,))
    got = (out.long() % (1 << 32)).tolist()
    assert got[0] == 0x3F800000
    assert got[1] == struct.unpack("<I", struct.pack("<ee", 1.0, -2.0))[0]
    assert got[2] == 3141592
    assert got[3] == 0x1234 and got[4] == 1


# ---- atomics -----------------------------------------------------------------------------------------------


def test_atomics_under_contention(lib):
    groups, size = 16, 128
    counter, total = torch.zeros(1, dtype=torch.int32), torch.zeros(1)
    largest = torch.full((1,), -1, dtype=torch.int32)
    slots = torch.full((groups * size,), -1, dtype=torch.int32)
    lib.dispatch("atomics", {0: counter, 1: total, 2: largest, 3: slots}, (groups,), (size,), os_threads=2)
    assert counter.item() == groups * size
    assert total.item() == groups * size * 0.5
    assert largest.item() == groups * size - 1
    for g in range(groups):  # every thread got its own slot in its threadgroup
        assert sorted(slots[g * size:(g + 1) * size].tolist()) == list(range(g * size, (g + 1) * size))


def test_atomic_compare_exchange(lib):
    x = torch.randn(1024).abs()
    bits = torch.zeros(1, dtype=torch.int32)
    lib.dispatch("atomic_cas", {0: bits, 1: x}, (8,), (128,), os_threads=2)
    assert bits.view(torch.float32).item() == x.max().item()


def test_numeric_limits_and_type_traits(lib):
    out = torch.zeros(9)
    lib.dispatch("limits_and_traits", {0: out}, (1,), (1,))
    assert out.tolist() == [65504.0, 2**-10, float(torch.finfo(torch.bfloat16).max), 2**-7, 1.0, 5.0, 3.0, math.inf, 1.0]
