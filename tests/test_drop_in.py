"""Drop-in compatibility with PyTorch's SDPA: causal biases, tensor subclasses, the exception classes code written for
PyTorch catches, and the calls PyTorch takes that an attention kernel might not (dropout_p = 1, key and value heads
that differ). PyTorch's own function is the yardstick for what is accepted and what is raised; the fp64 oracle for
the numbers."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import mfa_torch
from oracle import assert_close_fp64, attention_fp64

TORCH_SDPA = torch._C._nn.scaled_dot_product_attention  # PyTorch's own, whatever is patched


def _causal_bias(variant, L, S):
    with warnings.catch_warnings():  # PyTorch warns that lower-right with L > S has rows attending nothing
        warnings.simplefilter("ignore", UserWarning)
        return variant(L, S)


def _qkv(L, S, *, B=2, Hq=2, Hk=2, E=8, Ev=8, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    return make(B, Hq, L, E), make(B, Hk, S, E), make(B, Hk, S, Ev)


# ---------------------------------------------------------------------------------------------------------------
# torch.nn.attention.bias.CausalBias

SIZES = [(3, 7), (6, 6), (7, 3)]  # L < S, L = S, L > S
VARIANTS = [causal_upper_left, causal_lower_right]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.__name__)
@pytest.mark.parametrize("L,S", SIZES)
@pytest.mark.parametrize("how", ["direct", "patched"])
def test_causal_biases_give_pytorchs_result_and_gradients(variant, L, S, how):
    q, k, v = _qkv(L, S, grad=True)
    expected = TORCH_SDPA(q, k, v, attn_mask=_causal_bias(variant, L, S))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    if how == "direct":
        out = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=_causal_bias(variant, L, S))
    else:
        with mfa_torch.patch():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_bias(variant, L, S))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
    for name, grad, want in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(grad, want, atol=1e-5, rtol=0, msg=f"d{name}")
    # and both against the fp64 oracle (PyTorch could be wrong too)
    align = "upper_left" if variant is causal_upper_left else "bottom_right"
    assert_close_fp64("out", out, attention_fp64(q, k, v, causal=align)[0], torch.float32)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.__name__)
@pytest.mark.parametrize("L,S", SIZES)
def test_causal_biases_on_the_metal_kernels(variant, L, S):
    q, k, v = _qkv(L, S, grad=True)
    with mfa_torch.backend("emulator"):
        out = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=_causal_bias(variant, L, S))
        grads = torch.autograd.grad(out.sum(), (q, k, v))
    align = "upper_left" if variant is causal_upper_left else "bottom_right"
    ref = attention_fp64(q, k, v, causal=align)[0]
    assert_close_fp64("out", out, ref, torch.float32)
    for name, grad, want in zip("qkv", grads, torch.autograd.grad(ref.sum(), (q, k, v))):
        assert_close_fp64(f"d{name}", grad, want, torch.float32)


def test_a_causal_bias_with_is_causal_raises_pytorchs_error():
    q, k, v = _qkv(4, 4)
    with pytest.raises(ValueError) as theirs:
        TORCH_SDPA(q, k, v, attn_mask=causal_upper_left(4, 4), is_causal=True)
    with pytest.raises(type(theirs.value), match="CausalBias should not be used with causal=True"):
        mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=causal_upper_left(4, 4), is_causal=True)


def test_a_lower_right_bias_for_other_sizes_is_refused():
    q, k, v = _qkv(3, 7)
    with pytest.raises(RuntimeError, match=r"attn_mask is causal_lower_right\(4, 7\)"):
        mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(4, 7))


def test_explain_names_the_lower_right_alignment():
    q, k, v = _qkv(3, 7)
    assert "lower-right" in mfa_torch.explain(q, k, v, attn_mask=causal_lower_right(3, 7))


# ---------------------------------------------------------------------------------------------------------------
# Tensor subclasses: PyTorch's function decides what they mean

class Logged(torch.Tensor):
    """A subclass whose __torch_function__ records which functions it saw, as tracing and sharding wrappers do."""
    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("argument", ["query", "key", "value", "attn_mask"])
def test_a_subclass_argument_hands_the_call_to_pytorch(argument):
    q, k, v = _qkv(5, 6)
    args = dict(query=q, key=k, value=v, attn_mask=torch.rand(5, 6) > 0.3)
    expected = TORCH_SDPA(**args)
    args[argument] = args[argument].as_subclass(Logged)
    Logged.seen.clear()
    out = mfa_torch.scaled_dot_product_attention(**args)
    assert TORCH_SDPA in Logged.seen  # PyTorch's function ran, through the subclass's own hook
    assert type(out) is Logged
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected, atol=0, rtol=0)
    assert "Logged" in mfa_torch.explain(**args)


def test_a_subclass_with_an_extra_pytorch_lacks_is_refused():
    q, k, v = _qkv(5, 6)
    with pytest.raises(TypeError, match="query is a Logged.*window_size") as error:
        mfa_torch.scaled_dot_product_attention(q.as_subclass(Logged), k, v, window_size=(2, 0))
    assert isinstance(error.value, RuntimeError)


def test_parameters_stay_on_mfa_torchs_route():
    q, k, v = _qkv(5, 6)
    q = torch.nn.Parameter(q)
    assert "route: torch-sdpa" not in mfa_torch.explain(q, k, v, window_size=(2, 0))  # not handed over
    out = mfa_torch.scaled_dot_product_attention(q, k, v, window_size=(2, 0))
    assert_close_fp64("out", out, attention_fp64(q, k, v, window=(2, 0))[0], torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Exception classes: for every call PyTorch rejects, mfa_torch's error is an instance of PyTorch's exception class

def _q():
    return torch.randn(2, 4, 6, 8)


def _kv(heads=4, S=7, E=8, Ev=8):
    return torch.randn(2, heads, S, E), torch.randn(2, heads, S, Ev)


# (id, call(f)): f is an SDPA implementation; each call is one PyTorch rejects under its default or math backend.
REJECTED = [
    ("query_not_a_tensor", lambda f: f(1.0, *_kv())),
    ("integer_dtype", lambda f: f(_q().int(), *(t.int() for t in _kv()))),
    ("dtypes_differ", lambda f: f(_q(), _kv()[0].double(), _kv()[1])),
    ("devices_differ", lambda f: f(_q(), _kv()[0].to("meta"), _kv()[1])),
    ("rank_0", lambda f: f(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))),
    ("rank_1", lambda f: f(torch.randn(8), torch.randn(8), torch.randn(8))),
    ("head_dims_differ", lambda f: f(_q(), *_kv(E=9)[:1], _kv()[1])),
    ("key_and_value_lengths_differ", lambda f: f(_q(), _kv()[0], _kv(S=6)[1])),
    ("batches_differ", lambda f: f(_q(), torch.randn(3, 4, 7, 8), torch.randn(3, 4, 7, 8))),
    ("heads_differ_without_gqa", lambda f: f(_q(), *_kv(heads=2))),
    ("heads_not_dividing", lambda f: f(torch.randn(2, 6, 6, 8), *_kv(heads=4), enable_gqa=True)),
    ("mask_with_is_causal", lambda f: f(_q(), *_kv(), attn_mask=torch.ones(6, 7, dtype=torch.bool), is_causal=True)),
    ("mask_not_broadcastable", lambda f: f(_q(), *_kv(), attn_mask=torch.ones(5, 7, dtype=torch.bool))),
    ("mask_too_many_dims", lambda f: f(_q(), *_kv(), attn_mask=torch.ones(1, 2, 4, 6, 7, dtype=torch.bool))),
    ("mask_heads_not_broadcastable", lambda f: f(_q(), *_kv(), attn_mask=torch.ones(3, 6, 7, dtype=torch.bool))),
    ("mask_integer_dtype", lambda f: f(_q(), *_kv(), attn_mask=torch.ones(6, 7, dtype=torch.int32))),
    ("mask_float64_for_float32", lambda f: f(_q(), *_kv(), attn_mask=torch.zeros(6, 7, dtype=torch.float64))),
    ("mask_float16_for_float32", lambda f: f(_q(), *_kv(), attn_mask=torch.zeros(6, 7, dtype=torch.float16))),
    ("mask_not_a_tensor", lambda f: f(_q(), *_kv(), attn_mask=1.0)),
    ("dropout_above_one", lambda f: f(_q(), *_kv(), dropout_p=1.5)),
    ("dropout_not_a_number", lambda f: f(_q(), *_kv(), dropout_p="0.1")),
    ("is_causal_not_a_bool", lambda f: f(_q(), *_kv(), is_causal="yes")),
    ("is_causal_an_int", lambda f: f(_q(), *_kv(), is_causal=1)),
    ("scale_not_a_number", lambda f: f(_q(), *_kv(), scale="x")),
    ("enable_gqa_an_int", lambda f: f(_q(), *_kv(), enable_gqa=1)),
    ("unknown_keyword", lambda f: f(_q(), *_kv(), foo=1)),
]

# PyTorch's messages that its own tests match.
PHRASES = {"mask_with_is_causal": "Explicit attn_mask should not be set when is_causal=True",
           "dtypes_differ": "Expected query, key, and value to have the same dtype",
           "devices_differ": "Expected query, key, and value to have the same device type",
           "rank_1": "at least 2 dimensional",
           "mask_integer_dtype": "Expected attn_mask dtype to be bool or float or to match query dtype",
           "heads_not_dividing": "Number of heads in key and value must divide the number of heads in query"}


def _pytorchs_errors(call):
    """The exceptions PyTorch's SDPA raises for the call under its default backend choice and under the math
    backend (whose checks are the complete ones: the CPU flash kernel skips some)."""
    errors = []
    for backends in (None, [SDPBackend.MATH]):
        try:
            if backends is None:
                call(TORCH_SDPA)
            else:
                with sdpa_kernel(backends):
                    call(TORCH_SDPA)
        except Exception as error:  # noqa: BLE001  (any class PyTorch raises is the yardstick)
            errors.append(error)
    return errors


@pytest.mark.parametrize("how", ["direct", "patched"])
@pytest.mark.parametrize("name,call", REJECTED, ids=[c[0] for c in REJECTED])
def test_every_call_pytorch_rejects_raises_pytorchs_exception_class(name, call, how):
    theirs = _pytorchs_errors(call)
    assert theirs, f"{name}: PyTorch accepts this call; the case belongs elsewhere"
    function = mfa_torch.scaled_dot_product_attention
    if how == "patched":
        function = lambda *a, **k: F.scaled_dot_product_attention(*a, **k)  # noqa: E731
    with mfa_torch.patch() if how == "patched" else mfa_torch.backend("auto"):
        with pytest.raises(Exception) as ours:
            call(function)
    for error in theirs:
        assert isinstance(ours.value, type(error)), \
            f"{name}: PyTorch raises {type(error).__name__}, mfa_torch {type(ours.value).__mro__}: {ours.value}"
    if name in PHRASES:
        assert PHRASES[name] in str(ours.value)


# Calls PyTorch runs whose result would be garbage (NaN everywhere, or a scale float32 cannot hold): mfa_torch refuses
# them with a clear error, a deliberate difference the README lists.
REFUSED_ON_PURPOSE = [
    ("scale_nan", dict(scale=float("nan"))),
    ("scale_inf", dict(scale=float("inf"))),
    ("scale_beyond_float32", dict(scale=1e39)),
]


@pytest.mark.parametrize("name,kwargs", REFUSED_ON_PURPOSE, ids=[c[0] for c in REFUSED_ON_PURPOSE])
def test_deliberate_refusals_are_runtime_errors_naming_the_argument(name, kwargs):
    TORCH_SDPA(_q(), *_kv(), **kwargs)  # PyTorch runs it
    with pytest.raises(RuntimeError, match="scale"):
        mfa_torch.scaled_dot_product_attention(_q(), *_kv(), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Calls PyTorch takes that an attention kernel might not

@pytest.mark.parametrize("backend", ["auto", "emulator"])
def test_dropout_one_drops_everything_as_pytorch_does(backend):
    q, k, v = _qkv(5, 6, grad=True)
    with mfa_torch.backend(backend):
        out = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=1.0, window_size=(2, 2))
        grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = TORCH_SDPA(q, k, v, dropout_p=1.0)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(out, expected)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("backend", ["auto", "emulator"])
@pytest.mark.parametrize("Hk,Hv", [(2, 1), (1, 4), (2, 4)])
def test_key_and_value_heads_may_differ_as_in_pytorch(Hk, Hv, backend):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 5, 8, generator=g, requires_grad=True)
    k = torch.randn(2, Hk, 6, 8, generator=g, requires_grad=True)
    v = torch.randn(2, Hv, 6, 8, generator=g, requires_grad=True)
    ref = attention_fp64(q, k, v, causal="upper_left")[0]
    torch.testing.assert_close(TORCH_SDPA(q, k, v, is_causal=True, enable_gqa=True).double(), ref, atol=1e-5, rtol=0)
    with mfa_torch.backend(backend):
        out = mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, window_size=(3, 0))
        grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = attention_fp64(q, k, v, causal="upper_left", window=(3, 0))[0]
    assert_close_fp64("out", out, ref, torch.float32)
    for name, grad, want in zip("qkv", grads, torch.autograd.grad(ref.sum(), (q, k, v))):
        assert_close_fp64(f"d{name}", grad, want, torch.float32)


def test_explain_says_whose_dropout_a_route_applies():
    q, k, v = _qkv(5, 6)
    assert "dropout: PyTorch's own" in mfa_torch.explain(q, k, v, dropout_p=0.1)
    assert "dropout: PyTorch's own" in mfa_torch.explain(q, k, v, dropout_p=0.1, window_size=(2, 0))  # sdpa-mask
    ours = mfa_torch.explain(q, k, v, dropout_p=0.1, softcap=5.0)  # a softcap takes the reference route
    assert "route: reference" in ours
    assert "counter-based keep mask" in ours and "not PyTorch's dropout stream" in ours
    assert "dropout" not in mfa_torch.explain(q, k, v, window_size=(2, 0))


# matmul and linear: the same rule against torch.matmul and torch.nn.functional.linear
GEMM_REJECTED = [
    ("matmul_inner_dims", lambda matmul, linear: matmul(torch.randn(3, 4), torch.randn(5, 6))),
    ("matmul_dtypes", lambda matmul, linear: matmul(torch.randn(3, 4), torch.randn(4, 6).double())),
    ("matmul_rank_0", lambda matmul, linear: matmul(torch.tensor(1.0), torch.randn(4))),
    ("matmul_batches", lambda matmul, linear: matmul(torch.randn(2, 3, 4), torch.randn(3, 4, 5))),
    ("matmul_not_a_tensor", lambda matmul, linear: matmul(1.0, torch.randn(4))),
    ("linear_features", lambda matmul, linear: linear(torch.randn(3, 4), torch.randn(5, 6))),
    ("linear_bias", lambda matmul, linear: linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(3))),
    ("linear_weight_rank_3", lambda matmul, linear: linear(torch.randn(3, 4), torch.randn(2, 5, 4))),
    ("linear_dtypes", lambda matmul, linear: linear(torch.randn(3, 4), torch.randn(5, 4).double())),
]


@pytest.mark.parametrize("name,call", GEMM_REJECTED, ids=[c[0] for c in GEMM_REJECTED])
def test_gemm_errors_are_instances_of_pytorchs(name, call):
    with pytest.raises(Exception) as theirs:
        call(torch.matmul, F.linear)
    with pytest.raises(type(theirs.value)):
        call(mfa_torch.matmul, mfa_torch.linear)
