"""The attention kernels compiled in the emulator's fast-math mode (MFA_TORCH_EMULATOR_FAST_MATH=1: g++ -ffast-math),
as Apple's compiler may compile them under PYTORCH_MPS_FAST_MATH=1, which lets it assume that no value is infinite or
NaN. Rows that attend no key (by a bool mask, a -inf float mask or the causal structure) and -inf mask entries keep
their semantics there, in the forward, the split-KV combine and both backward kernels: output 0, lse -inf, zero
gradients, every other row and every gradient as the fp64 oracle. The mode rejects INFINITY, NAN and isinf/isnan at
compile time and folds x * 0 to 0, so kernels that compare scores with -INFINITY fail here.

NaN inputs: under fast math whether a NaN reaches the rows that attend it is not defined, even for correct kernels:
the compiler may assume there is none (g++ rewrites out * (sum > 0 ? 1 / sum : 0) so that a NaN row's output becomes
0, and Metal's fast::max of a NaN is undefined). What holds and is asserted: a NaN reaches no row that does not
attend it; those rows (and their gradients) equal the oracle.
"""
import pytest
import torch

import mfa_torch
from mfa_torch.metal import emulator_executor
from kernel_routes import FULL_MATRIX
from oracle import attention_fp64, check_against_oracle, torch_attention_same_dtype

pytestmark = pytest.mark.emulator

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _dtypes(default):
    """Where the dtype changes only the inputs (not a mask's -inf bits): one per test unless MFA_TORCH_FULL_MATRIX=1."""
    return DTYPES if FULL_MATRIX else [default]


@pytest.fixture(autouse=True)
def _fast_math(monkeypatch):
    monkeypatch.setenv(emulator_executor.FAST_MATH_ENV, "1")


def _sdpa(t, **kw):
    with mfa_torch.backend("emulator"):
        return mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], return_lse=True, **kw)


def _fast_shaders():
    """The shaders this process compiled in the fast-math mode."""
    return {key[0] for key in emulator_executor._libraries if key[3]}


def _check(shapes, dtype, seed, mask, window=None):
    """Forward, lse and every gradient against the fp64 oracle (PyTorch in `dtype` as the yardstick); returns
    (inputs, out, lse) of mfa_torch's call for further checks."""
    g = torch.Generator().manual_seed(seed)
    inputs = {n: torch.randn(s, generator=g).to(dtype).requires_grad_() for n, s in shapes.items()}
    oracles = [lambda t, f=f: f(t["q"], t["k"], t["v"], mask=mask, window=window)
               for f in (attention_fp64, torch_attention_same_dtype)]
    ours = lambda t: _sdpa(t, attn_mask=mask, window_size=window, enable_gqa=True)  # noqa: E731
    check_against_oracle(ours, *oracles, inputs, dtype, check_lse=True)
    out, lse = ours(inputs)
    return inputs, out, lse


def _assert_rows_without_keys_are_zero(inputs, out, lse, dead):
    """Output 0 and lse -inf exactly on the rows that attend nothing; their dq is 0."""
    assert dead.any() and not dead.all()
    assert torch.all(out[dead] == 0) and torch.all(torch.isneginf(lse[dead])) and torch.isfinite(lse[~dead]).all()
    dq, dk, dv = torch.autograd.grad(out, [inputs[n] for n in "qkv"], torch.ones_like(out))
    assert torch.all(dq[dead] == 0) and all(torch.isfinite(g).all() for g in (dq, dk, dv))


def test_the_environment_variable_selects_the_fast_math_build(monkeypatch):
    q = torch.randn(1, 1, 3, 8)
    _sdpa({"q": q, "k": q, "v": q})
    assert "attention_forward.metal" in _fast_shaders()
    monkeypatch.setenv(emulator_executor.FAST_MATH_ENV, "yes")
    with pytest.raises(ValueError, match='MFA_TORCH_EMULATOR_FAST_MATH must be "0" or "1", got \'yes\''):
        _sdpa({"q": q, "k": q, "v": q})


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_neginf_float_masks_and_fully_masked_rows(dtype):
    """A float mask in the inputs' dtype (each dtype's -inf bits) with scattered -inf entries and whole -inf rows, GQA,
    keys over two blocks."""
    B, Hq, Hk, L, S, E = 2, 4, 2, 11, 150, 32
    g = torch.Generator().manual_seed(4)
    mask = torch.randn(B, 1, L, S, generator=g)
    mask[torch.rand(B, 1, L, S, generator=g) < 0.4] = float("-inf")
    mask[0, 0, 3] = float("-inf")
    mask[1, 0, 0] = float("-inf")
    mask[:, :, 5, :140] = float("-inf")  # row 5 keeps keys of the second block only
    mask = mask.to(dtype)
    inputs, out, lse = _check({"q": (B, Hq, L, E), "k": (B, Hk, S, E), "v": (B, Hk, S, E)}, dtype, 1, mask)
    _assert_rows_without_keys_are_zero(inputs, out, lse, torch.isneginf(mask).all(-1).expand(B, Hq, L))


@pytest.mark.parametrize("dtype", _dtypes(torch.float16), ids=str)
def test_rows_without_keys_from_a_bool_mask_and_the_causal_band(dtype):
    """A bool mask with all-False rows and a causal window: row 0 sees key 0 only, and the mask takes it away."""
    B, H, L, S, E = 1, 3, 20, 20, 16
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(B, H, L, S, generator=g) > 0.3
    mask[..., 0, 0] = False
    mask[0, 1, 9] = False
    inputs, out, lse = _check({"q": (B, H, L, E), "k": (B, H, S, E), "v": (B, H, S, E)}, dtype, 2, mask, (-1, 0))
    dead = ~(mask & torch.ones(L, S, dtype=torch.bool).tril()).any(-1)
    _assert_rows_without_keys_are_zero(inputs, out, lse, dead)


@pytest.mark.parametrize("dtype", _dtypes(torch.bfloat16), ids=str)
def test_split_kv_rows_that_no_split_or_only_one_split_attends(dtype):
    """Decoding shapes split the keys across threadgroups and attention_combine merges them: a row no split attends
    (every split's stats (-inf, 0)), a row only the last split attends, and ordinary rows."""
    Hq, Hk, L, S, E = 4, 2, 3, 1100, 32
    g = torch.Generator().manual_seed(6)
    mask = torch.rand(1, Hq, L, S, generator=g) > 0.5
    mask[0, :, 0] = False
    mask[0, 1, 1, :1050] = False
    inputs, out, lse = _check({"q": (1, Hq, L, E), "k": (1, Hk, S, E), "v": (1, Hk, S, E)}, dtype, 3, mask)
    assert "attention_combine.metal" in _fast_shaders()
    _assert_rows_without_keys_are_zero(inputs, out, lse, ~mask.any(-1))


def test_every_row_masked_gives_zero_and_zero_gradients():
    q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for n in (4, 6, 6))
    for mask in (torch.zeros(1, 1, 4, 6, dtype=torch.bool), torch.full((1, 1, 4, 6), float("-inf"))):
        out, lse = _sdpa({"q": q, "k": k, "v": v}, attn_mask=mask)
        assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
        for grad in torch.autograd.grad(out.sum(), (q, k, v)):
            assert torch.all(grad == 0)


@pytest.mark.parametrize("case", ["nan-q-row", "nan-k-causal", "nan-k-split"])
def test_a_nan_reaches_no_row_that_does_not_attend_it(case):
    """Rows that do not attend the NaN: output and lse as the oracle (see the module docstring for the others), and dq
    where the NaN is in another head (a NaN key in the causal rows' tile reaches their dq through 0 x NaN in the
    dS K product, in the oracle too)."""
    torch.manual_seed(7)
    if case == "nan-k-split":  # keys of K/V head 0 only: query heads 0 and 1 attend it, 2 and 3 do not
        q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 2, 1100, 8), torch.randn(1, 2, 1100, 8)
        k[0, 0, 10, 2] = float("nan")
        clean = (slice(None), slice(2, 4))
    else:
        q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
        if case == "nan-q-row":
            q[0, 0, 2, 3] = float("nan")
            clean = (0, 1)  # the other head
        else:
            k[0, 0, 4, 0] = float("nan")
            clean = (0, 0, slice(0, 4))  # the causal rows before the NaN key
    causal = case == "nan-k-causal"
    leaves = {n: t.clone().requires_grad_() for n, t in zip("qkv", (q, k, v))}
    out, lse = _sdpa(leaves, is_causal=causal, enable_gqa=True)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_fp64(*ref_leaves, causal="upper_left" if causal else None)
    dq, = torch.autograd.grad(out, leaves["q"], torch.ones_like(out))
    ref_dq, = torch.autograd.grad(ref, ref_leaves[0], torch.ones_like(ref))
    checks = [("out", out, ref), ("lse", lse, ref_lse)] + ([("dq", dq, ref_dq)] if case != "nan-k-causal" else [])
    for name, ours, want in checks:
        assert torch.isfinite(want[clean]).all()
        assert torch.allclose(ours[clean].double(), want[clean], atol=1e-5, rtol=1e-4), name
    if case == "nan-k-split":
        assert "attention_combine.metal" in _fast_shaders()
