"""The Metal GEMM (shaders/gemm.metal) against the fp64 oracle with the 2x-PyTorch-error rule: under the MSL emulator
(marked `emulator`, CPU tensors) and mirrored on a real Apple GPU (marked `mps`, skipped elsewhere).

Through the public API (`mfa_torch.matmul` / `mfa_torch.linear`, autograd included) and through
mfa_torch/metal/gemm.py directly (every GPU family's block table, accumulation; the checked modes are emulator-only).
The API tests also assert which kernels ran (a silent reference route would prove nothing). Leaves, the oracle and
PyTorch's yardstick live on the CPU; our calls move the operands to the route's device and the result back.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle import DT_IDS, DTYPES, assert_rule, check_against_oracle, linear_fp64, make_inputs, matmul_fp64, max_err

import mfa_torch
from kernel_routes import DEVICE, KERNEL_ROUTES, kernel_route, with_dtypes
from mfa_torch import _C
from mfa_torch.metal import executors
from mfa_torch.metal import gemm as metal_gemm


@pytest.fixture(params=KERNEL_ROUTES)
def route(request):
    """The Metal kernels' route, also the backend to select: "emulator" (CPU tensors) or "metal" (MPS tensors)."""
    return request.param


@pytest.fixture
def launches(monkeypatch):
    """The plans the executors run during the test: a list of (plan, {name: tensor})."""
    runs = []
    real_run = executors.run

    def recording_run(route, plan, tensors, checks=None, family=None):
        runs.append((plan, dict(tensors)))
        return real_run(route, plan, tensors, checks, family)

    monkeypatch.setattr(executors, "run", recording_run)
    return runs


def kernels(runs):
    return [launch.kernel for plan, _ in runs for launch in plan.launches]


def check_matmul(route, sa, sb, dtype, *, transpose_a=False, transpose_b=False, seed=0):
    """mfa_torch.matmul on the route vs the oracle, output and both gradients; operands may be transposed
    views (the leaves are stored transposed, the op gets non-contiguous views)."""
    shapes = {"a": sa[:-2] + sa[-2:][::-1] if transpose_a else sa, "b": sb[:-2] + sb[-2:][::-1] if transpose_b else sb}
    view = {"a": transpose_a, "b": transpose_b}

    def operands(t, device="cpu"):
        return [t[n].to(device).transpose(-1, -2) if view[n] else t[n].to(device) for n in ("a", "b")]

    with kernel_route(route) as device:
        return check_against_oracle(lambda t: mfa_torch.matmul(*operands(t, device)).cpu(),
                                    lambda t: matmul_fp64(*operands(t)), lambda t: torch.matmul(*operands(t)),
                                    make_inputs(shapes, dtype, seed=seed), dtype)


SHAPES = [  # square, rectangular, primes, ones, a couple of medium sizes
    ((1, 1), (1, 1)),
    ((7, 13), (13, 61)),
    ((61, 7), (7, 13)),
    ((32, 32), (32, 32)),
    ((33, 47), (47, 17)),
    ((97, 130), (130, 70)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}@{s[1]}".replace(" ", ""))
def test_matmul_shapes(route, shapes, dtype, launches):
    check_matmul(route, *shapes, dtype, seed=sum(shapes[0]))
    assert kernels(launches).count("gemm") == 3  # forward, dA and dB all on the Metal kernel


BROADCASTS = [
    ((13,), (13,)),  # dot
    ((13,), (13, 7)),  # vector-matrix
    ((7, 13), (13,)),  # matrix-vector
    ((3, 5, 7), (7, 6)),  # batched x shared matrix: dB summed over the batch
    ((64, 4, 16), (16, 8)),  # ... over a longer batch
    ((5, 7), (3, 7, 6)),  # shared matrix x batched: dA summed over the batch
    ((3, 5, 7), (3, 7, 6)),  # bmm
    ((2, 1, 5, 7), (3, 7, 6)),  # broadcast batch dims
    ((2, 3, 5, 7), (7,)),  # N-D x vector
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=lambda s: f"{s[0]}@{s[1]}".replace(" ", ""))
def test_matmul_broadcasting(route, shapes, dtype, launches):
    check_matmul(route, *shapes, dtype, seed=len(shapes[0]) + 10 * len(shapes[1]))
    assert "gemm" in kernels(launches)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("transpose_a, transpose_b", [(True, False), (False, True), (True, True)])
def test_matmul_transposed_operands(route, transpose_a, transpose_b, dtype, launches):
    check_matmul(route, (2, 19, 23), (2, 23, 11), dtype, transpose_a=transpose_a, transpose_b=transpose_b)
    first = launches[0][1]  # the forward's operands: the views themselves, not copies
    assert first["a"].is_contiguous() != transpose_a and first["b"].is_contiguous() != transpose_b


def check_linear(route, sx, sw, dtype, seed):
    """mfa_torch.linear with a bias vs the oracle: output and the gradients of input, weight and bias."""
    inputs = make_inputs({"x": sx, "w": sw, "b": (sw[0],)}, dtype, seed=seed)
    with kernel_route(route) as device:
        check_against_oracle(lambda t: mfa_torch.linear(*(t[n].to(device) for n in "xwb")).cpu(),
                             lambda t: linear_fp64(t["x"], t["w"], t["b"]),
                             lambda t: F.linear(t["x"], t["w"], t["b"]), inputs, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("sx, sw", [((5, 7), (13, 7)), ((2, 3, 17), (29, 17)), ((17,), (5, 17))])
def test_linear_with_bias(route, sx, sw, dtype, launches):
    check_linear(route, sx, sw, dtype, seed=3)
    assert kernels(launches).count("gemm") == 3


@pytest.mark.emulator
@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 90), batch=st.sampled_from([(), (1,), (3,)]),
       broadcast=st.sampled_from(["none", "a", "b"]), transpose_a=st.booleans(), transpose_b=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 16))
def test_hypothesis_shapes_and_layouts(m, n, k, batch, broadcast, transpose_a, transpose_b, dtype, seed):
    """Random sizes (edge tiles everywhere), batch broadcasting and transposed views of either operand."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*(() if broadcast == "a" else batch), *((k, m) if transpose_a else (m, k)), generator=g)
    b = torch.randn(*(() if broadcast == "b" else batch), *((n, k) if transpose_b else (k, n)), generator=g)
    a, b = a.to(dtype), b.to(dtype)
    a, b = a.transpose(-1, -2) if transpose_a else a, b.transpose(-1, -2) if transpose_b else b
    with mfa_torch.backend("emulator"):
        out = mfa_torch.matmul(a, b)
    assert out.dtype == dtype
    assert_rule("out", out, torch.matmul(a, b), matmul_fp64(a, b), dtype)


@pytest.mark.emulator
def test_gradients_read_transposes_in_place(launches):
    """linear's weight^T, and dB = x^T dC, reach the kernel as views of the caller's storage (no transposed copy)."""
    x = torch.randn(6, 9, requires_grad=True)
    w = torch.randn(4, 9, requires_grad=True)
    with mfa_torch.backend("emulator"):
        mfa_torch.linear(x, w).sum().backward()
    (_, forward), (_, grad_a), (_, grad_b) = launches
    assert forward["b"].untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    assert not forward["b"].is_contiguous()
    assert grad_a["b"].untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    assert grad_b["a"].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert not grad_b["a"].is_contiguous()


def stream_k(m, n, k, dtype, family="apple9"):
    """Whether the planner spreads this output's tiles over workers that share some (the tests below need it to)."""
    p = _C.GemmProblem()
    p.dtype, p.family, p.batch, p.m, p.n, p.k = str(dtype).removeprefix("torch."), family, 1, m, n, k
    p.a_strides, p.b_strides = [m * k, k, 1], [k * n, n, 1]
    return len(_C.plan_gemm(p).launches) == 2


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_stream_k_with_bias_and_gradients(route, dtype, launches):
    """A skinny output with a long K is spread over Stream-K workers (float partials + the ordered reduction)."""
    assert stream_k(5, 3, 777, dtype, executors.gpu_family(route))
    check_linear(route, (5, 777), (3, 777), dtype, seed=4)
    assert kernels(launches)[:2] == ["gemm", "gemm_reduce"]


def direct(route, inputs, dtype, ours, oracle, torch_fn):
    """A call of mfa_torch/metal/gemm.py on the route's device (ours(tensors on that device)) vs the oracle."""
    device = DEVICE[route]
    check_against_oracle(lambda t: ours({n: x.to(device) for n, x in t.items()}).cpu(), oracle, torch_fn, inputs,
                         dtype, grads=False)


def test_stream_k_is_deterministic(route):
    device = DEVICE[route]
    a, b = torch.randn(1, 6, 1500, device=device), torch.randn(1, 1500, 4, device=device)
    assert stream_k(6, 4, 1500, torch.float32, "apple7")
    first = metal_gemm.gemm(route, a, b, None, family="apple7")
    assert torch.equal(first, metal_gemm.gemm(route, a, b, None, family="apple7"))


LAYOUTS = {  # (a, b) of a (2, 148, 104) x (104, 136) product: interior tiles, an edge in every dimension
    "rows": lambda a, b: (a, b),
    "transposed": lambda a, b: (a.transpose(1, 2).contiguous().transpose(1, 2), b.transpose(1, 2).contiguous().transpose(1, 2)),
    "linear": lambda a, b: (a, b.transpose(1, 2).contiguous().transpose(1, 2)),  # x @ weight^T
    "offset": lambda a, b: (torch.cat([a.flatten(), a.new_zeros(1)])[1:].view_as(a), b),  # a one element off
}
# What each layout must take (A, B): staged 16 bytes along rows (1) or 4 elements down columns (2) or by element
# (0); read from device memory where the family's table says so and the rows allow.
COPY_MODES = {"rows": (1, 1), "transposed": (2, 2), "linear": (1, 2), "offset": (0, 1)}


@pytest.mark.parametrize("layout, family, dtype", [
    pytest.param(layout, family, dtype, id=f"{layout}-{family}-{str(dtype).removeprefix('torch.')}")
    for (layout, family), dtype in with_dtypes([(layout, family) for family in ("apple7", "apple9")
                                                for layout in LAYOUTS], DTYPES)])
def test_interior_tiles_on_every_path(route, layout, family, dtype, launches):
    """Whole 64 x 64 tiles and whole K blocks (the check-free interior steps) next to edge tiles and a partial K
    block, for operands staged by rows, by columns and by element, and read straight from device memory."""
    inputs = make_inputs({"a": (2, 148, 104), "b": (1, 104, 136)}, dtype, seed=8)
    operands = lambda t: LAYOUTS[layout](t["a"], t["b"])
    direct(route, inputs, dtype, lambda t: metal_gemm.gemm(route, *operands(t), None, family=family),
           lambda t: matmul_fp64(*operands(t)), lambda t: torch.matmul(*operands(t)))
    (plan, _), = launches
    gemm = plan.launches[0]
    (params,) = [a.bytes for a in gemm.arguments if not a.tensor]
    copy_modes = int.from_bytes(params[100:104], "little")  # GemmParams::copy_modes (test_gemm_plan.PARAMS)
    assert (copy_modes & 3, copy_modes >> 2) == COPY_MODES[layout]
    d = dict(gemm.defines)
    from_device = (family == "apple9" or dtype == torch.float32, family == "apple9")
    assert (d["MFA_A_FROM_DEVICE"], d["MFA_B_FROM_DEVICE"]) == \
        tuple(str(int(f and layout in ok)) for f, ok in zip(from_device, (("rows", "linear"), ("rows", "offset"))))


FAMILY_CASES = [("apple7", torch.float32), ("apple8", torch.float16), ("apple7", torch.bfloat16),
                ("apple9", torch.float16), ("apple10", torch.float32)]


@pytest.mark.parametrize("family, dtype", FAMILY_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_every_block_table(route, family, dtype):
    """Each family's table (64 x 64 x 32; operands staged or read from device) with edge tiles in every dimension, a
    broadcast batch and a bias."""
    inputs = make_inputs({"a": (3, 53, 71), "b": (1, 71, 50), "bias": (50,)}, dtype, seed=5)
    direct(route, inputs, dtype, lambda t: metal_gemm.gemm(route, t["a"], t["b"], t["bias"], family=family),
           lambda t: matmul_fp64(t["a"], t["b"]) + t["bias"], lambda t: torch.matmul(t["a"], t["b"]) + t["bias"])


@pytest.mark.parametrize("family", ["apple7", "apple9"])
def test_stream_k_in_every_block_table(route, family):
    assert stream_k(9, 10, 1200, torch.float32, family)
    inputs = make_inputs({"a": (1, 9, 1200), "b": (1, 1200, 10)}, torch.float32, seed=6)
    direct(route, inputs, torch.float32, lambda t: metal_gemm.gemm(route, t["a"], t["b"], None, family=family),
           lambda t: matmul_fp64(t["a"], t["b"]), lambda t: torch.matmul(t["a"], t["b"]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("k", [19, 900], ids=["one-pass", "stream-k"])
def test_accumulate_into_c(route, k, dtype):
    assert stream_k(11, 9, k, dtype) == (k == 900)
    inputs = make_inputs({"a": (2, 11, k), "b": (2, k, 9), "c": (2, 11, 9), "bias": (9,)}, dtype, seed=7)
    direct(route, inputs, dtype,
           lambda t: metal_gemm.gemm(route, t["a"], t["b"], t["bias"], c=t["c"].detach().clone(), family="apple9"),
           lambda t: t["c"] + matmul_fp64(t["a"], t["b"]) + t["bias"],
           lambda t: t["c"] + torch.matmul(t["a"], t["b"]) + t["bias"])


@pytest.mark.emulator
@pytest.mark.parametrize("checks", ["bounds", "races"])
def test_checked_modes(checks):
    """No out-of-bounds access (exact-size buffers) and no race between threads: a one-pass problem whose a has two
    strides above 1, a Stream-K problem with a transposed a (broadcast b, bias and edge tiles in both), and interior
    tiles read from device memory (M3) and staged in 16 bits (M1)."""
    strided = torch.randn(40, 3, 5)[:, :, 1:4:2].permute(2, 1, 0)  # (2, 3, 40)
    transposed = torch.randn(2, 900, 3).transpose(1, 2)  # (2, 3, 900)
    assert stream_k(3, 7, 900, torch.float32)
    for a in (strided, transposed):
        b, bias = torch.randn(1, a.shape[2], 7), torch.randn(7)
        out = metal_gemm.gemm("emulator", a, b, bias, family="apple9", checks=checks)
        assert max_err(out, matmul_fp64(a, b) + bias.double()) < 1e-4
    a, b, bias = torch.randn(1, 130, 70), torch.randn(1, 70, 136), torch.randn(136)
    for family, dtype in (("apple9", torch.float32), ("apple7", torch.float16)):
        out = metal_gemm.gemm("emulator", a.to(dtype), b.to(dtype), bias.to(dtype), family=family, checks=checks)
        assert_rule("out", out, torch.matmul(a.to(dtype), b.to(dtype)) + bias.to(dtype),
                    matmul_fp64(a.to(dtype), b.to(dtype)) + bias.to(dtype).double(), dtype)


def test_empty_and_zero_depth_problems(route, launches):
    with kernel_route(route) as device:
        assert mfa_torch.matmul(torch.randn(0, 5, device=device), torch.randn(5, 3, device=device)).shape == (0, 3)
        assert mfa_torch.matmul(torch.randn(0, 4, 5, device=device), torch.randn(5, 3, device=device)).shape == \
            (0, 4, 3)
        zero_depth = mfa_torch.matmul(torch.randn(4, 0, device=device), torch.randn(0, 3, device=device))
        bias = torch.randn(3, device=device)
        out = mfa_torch.linear(torch.randn(4, 0, device=device), torch.randn(3, 0, device=device), bias)
    assert torch.equal(zero_depth.cpu(), torch.zeros(4, 3))
    assert torch.equal(out, bias.expand(4, 3))
    assert kernels(launches) == ["gemm", "gemm"]  # the empty output launches nothing


@pytest.mark.emulator
@pytest.mark.filterwarnings("ignore:mfa_torch. the Metal kernels do not implement")
def test_float64_takes_the_reference_route(launches):
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with mfa_torch.backend("emulator"):
        out = mfa_torch.matmul(a, b)
    assert max_err(out, matmul_fp64(a, b)) < 1e-12
    assert not launches
