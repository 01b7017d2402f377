"""PyTorch's own paths off Apple GPUs (mfa_torch/pytorch_paths.py): the routing rule `explain` reports, and the
semantics of each path against the fp64 oracle with the 2x-PyTorch-error rule, as for mfa_torch's own kernels.

"sdpa-mask" is PyTorch's SDPA given the mask mfa_torch builds; "flex" is flex_attention compiled with a block mask
and a score_mod (forward only on a CPU: PyTorch 2.13 has no flex backward or lse there). Each new flex
configuration compiles for seconds, so the flex cases share shapes and run in float32; MFA_TORCH_FULL_MATRIX=1 adds
the 16-bit dtypes.
"""
import pytest
import torch

import mfa_torch
from mfa_torch import pytorch_paths
from kernel_routes import FULL_MATRIX
from oracle import attention_fp64, check_against_oracle, flash_to_sdpa, make_inputs, sdpa_to_flash, \
    torch_attention_same_dtype


def _explain(L=64, S=64, grad=False, dtype=torch.float32, **kwargs):
    q = torch.randn(1, 2, L, 8, dtype=dtype, requires_grad=grad)
    k, v = torch.randn(1, 2, S, 8, dtype=dtype), torch.randn(1, 2, S, 8, dtype=dtype)
    return mfa_torch.explain(q, k, v, **kwargs)


def _route(text):
    return text.removeprefix("route: ").split(" ", 1)[0]


# ---------------------------------------------------------------------------------------------------------------
# The rule

BIG = 1024  # L = S = 1024: 2^20 scores per head, where flex is preferred


@pytest.mark.parametrize("kwargs,grad,L,route", [
    (dict(is_causal=True), False, BIG, "torch-sdpa"),  # PyTorch's SDPA takes it as it is
    (dict(window_size=(16, 0), is_causal=True), False, BIG, "flex"),
    (dict(window_size=(16, 0), is_causal=True), False, 64, "sdpa-mask"),  # small: flex's overheads dominate
    (dict(window_size=(16, 0), is_causal=True), False, 512, "sdpa-mask"),  # 2^18 scores: below flex's threshold
    (dict(window_size=(16, 0), is_causal=True), True, BIG, "sdpa-mask"),  # flex has no backward on a CPU
    (dict(alibi_slopes=torch.rand(2)), True, 64, "sdpa-mask"),
    (dict(softcap=20.0), False, BIG, "flex"),
    (dict(softcap=20.0), True, 64, "reference"),  # neither path: no mask expresses a softcap
    (dict(window_size=(16, 0), return_lse=True), False, BIG, "reference"),  # no lse from either on a CPU
    (dict(window_size=(16, 0), attn_mask=torch.rand(64, 64) > 0.5), False, 64, "sdpa-mask"),
    (dict(window_size=(16, 0), dropout_p=0.1), True, 64, "sdpa-mask"),
], ids=["plain", "window_large", "window_small", "window_below_threshold", "window_grad", "alibi_grad", "softcap_large", "softcap_grad",
        "lse", "window_and_mask", "window_dropout"])
def test_the_rule_picks_the_fastest_path_that_takes_the_call(kwargs, grad, L, route):
    text = _explain(L, L, grad, **kwargs)
    assert _route(text) == route, text


def test_float64_takes_sdpa_mask_not_flex():
    assert _route(_explain(BIG, BIG, dtype=torch.float64, window_size=(16, 0))) == "sdpa-mask"


def test_a_mask_over_the_budget_takes_the_reference_route(monkeypatch):
    monkeypatch.setenv(pytorch_paths.MASK_BUDGET_ENV, "0.015")  # the (64, 64) float32 mask takes 16 KiB
    text = _explain(window_size=(16, 0), is_causal=True)
    assert _route(text) == "reference" and "a mask of 0.0 MiB, over the 0.0149994 MiB budget" in text
    monkeypatch.setenv(pytorch_paths.MASK_BUDGET_ENV, "0.015625")  # exactly 16 KiB fits
    assert _route(_explain(window_size=(16, 0), is_causal=True)) == "sdpa-mask"


@pytest.mark.parametrize("value", ["-1", "lots", "inf"])
def test_a_bad_mask_budget_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(pytorch_paths.MASK_BUDGET_ENV, value)
    with pytest.raises(RuntimeError, match=pytorch_paths.MASK_BUDGET_ENV):
        _explain(window_size=(16, 0))


def test_the_reference_backend_keeps_mfa_torchs_kernels():
    with mfa_torch.backend("reference"):
        assert _route(_explain(BIG, BIG, window_size=(16, 0))) == "reference"


@pytest.mark.parametrize("backend,kwargs,grad,why", [
    ("flex", dict(window_size=(16, 0)), True, "gradients"),
    ("flex", dict(window_size=(16, 0), dropout_p=0.1), False, "dropout"),
    ("flex", dict(attn_mask=torch.ones(64, 64, dtype=torch.bool)), False, "attn_mask"),
    ("flex", dict(window_size=(16, 0)), False, "sequences shorter than 128"),
    ("sdpa-mask", dict(softcap=3.0), False, "softcap"),
    ("sdpa-mask", dict(return_lse=True), False, "return_lse"),
])
def test_a_forced_path_that_cannot_take_a_call_says_why(backend, kwargs, grad, why):
    with mfa_torch.backend(backend), pytest.raises(RuntimeError, match=f'backend "{backend}" cannot take.*{why}'):
        _explain(grad=grad, **kwargs)


def test_varlen_takes_neither_path():
    q, k, v = torch.randn(9, 2, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with mfa_torch.backend("sdpa-mask"), pytest.raises(RuntimeError, match="varlen"):
        mfa_torch.flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, causal=True)


# ---------------------------------------------------------------------------------------------------------------
# Semantics: each path against the fp64 oracle

def _sdpa_case(shapes, dtype, oracle_kwargs, grads, seed=0, **kwargs):
    """mfa_torch's sdpa on the selected backend vs the fp64 oracle and PyTorch in the same dtype."""
    inputs = make_inputs(shapes, dtype, seed=seed)
    check_against_oracle(
        lambda t: mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], **kwargs),
        lambda t: attention_fp64(t["q"], t["k"], t["v"], **oracle_kwargs),
        lambda t: torch_attention_same_dtype(t["q"], t["k"], t["v"], **oracle_kwargs),
        inputs, dtype, grads=grads)


# GQA 4/2, L != S (neither a multiple of flex's blocks of 128), E != Ev; flex takes sequences of 128 and more on a CPU
SHAPES = {"q": (2, 4, 130, 16), "k": (2, 2, 150, 16), "v": (2, 2, 150, 24)}
SHAPES_L_ABOVE_S = {"q": (1, 2, 150, 16), "k": (1, 2, 130, 16), "v": (1, 2, 130, 16)}
ALIBI = torch.rand(4) * 0.3


def _cases():
    """(id, shapes, sdpa kwargs, oracle kwargs): every feature either path takes; softcap is flex's alone."""
    mask = torch.rand(130, 150, generator=torch.Generator().manual_seed(5)) > 0.4
    bias = torch.randn(2, 1, 130, 150, generator=torch.Generator().manual_seed(6))
    return [
        ("window_causal", SHAPES, dict(is_causal=True, window_size=(9, 0), enable_gqa=True),
         dict(causal="upper_left", window=(9, 0))),
        ("window_two_sided", SHAPES, dict(window_size=(5, 7), enable_gqa=True), dict(window=(5, 7))),
        ("lower_right_l_above_s", SHAPES_L_ABOVE_S,  # the first 20 rows attend nothing
         dict(attn_mask=torch.nn.attention.bias.causal_lower_right(150, 130)), dict(causal="bottom_right")),
        ("alibi_causal", SHAPES, dict(is_causal=True, alibi_slopes=ALIBI, enable_gqa=True),
         dict(causal="upper_left", alibi_slopes=ALIBI)),
        ("softcap_window", SHAPES, dict(softcap=2.0, window_size=(9, 3), enable_gqa=True),
         dict(softcap=2.0, window=(9, 3))),
        ("softcap_alibi", SHAPES, dict(softcap=2.0, alibi_slopes=ALIBI, enable_gqa=True),
         dict(softcap=2.0, alibi_slopes=ALIBI)),
        ("bool_mask_window", SHAPES, dict(attn_mask=mask, window_size=(9, 9), enable_gqa=True),
         dict(mask=mask, window=(9, 9))),
        ("float_mask_alibi", SHAPES, dict(attn_mask=bias, alibi_slopes=ALIBI, is_causal=False, enable_gqa=True),
         dict(mask=bias, alibi_slopes=ALIBI)),
    ]


SDPA_MASK_CASES = [c for c in _cases() if "softcap" not in c[0]]
# Each score_mod is its own compilation (seconds): softcap_alibi runs both of flex's score functions.
FLEX_CASES = [c for c in _cases() if "mask" not in c[0] and c[0] not in ("alibi_causal", "softcap_window")]
LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("name,shapes,kwargs,oracle", SDPA_MASK_CASES, ids=[c[0] for c in SDPA_MASK_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_sdpa_mask_forward_and_backward(name, shapes, kwargs, oracle, dtype):
    with mfa_torch.backend("sdpa-mask"):
        _sdpa_case(shapes, dtype, oracle, grads=True, **kwargs)


@pytest.mark.parametrize("name,shapes,kwargs,oracle", FLEX_CASES, ids=[c[0] for c in FLEX_CASES])
@pytest.mark.parametrize("dtype", [torch.float32] + (LOW_PRECISION if FULL_MATRIX else []))
def test_flex_forward(name, shapes, kwargs, oracle, dtype):
    with mfa_torch.backend("flex"), torch.no_grad():
        _sdpa_case(shapes, dtype, oracle, grads=False, **kwargs)


@pytest.mark.parametrize("backend", ["flex", "sdpa-mask"])
def test_flash_attn_func_on_each_path(backend):
    """Bottom-right causal with a window and ALiBi through FlashAttention's layout (strided views of it)."""
    inputs = make_inputs({"q": (2, 130, 4, 16), "k": (2, 150, 2, 16), "v": (2, 150, 2, 16)}, torch.float32)
    slopes = torch.rand(2, 4) * 0.3
    grads = backend == "sdpa-mask"
    options = dict(causal="bottom_right", window=(7, 0), alibi_slopes=slopes, align="bottom_right")
    with mfa_torch.backend(backend), torch.set_grad_enabled(grads):
        check_against_oracle(
            lambda t: mfa_torch.flash_attn_func(t["q"], t["k"], t["v"], causal=True, window_size=(7, 0),
                                                alibi_slopes=slopes),
            lambda t: sdpa_to_flash(attention_fp64(*(flash_to_sdpa(t[n]) for n in "qkv"), **options)[0]),
            lambda t: sdpa_to_flash(torch_attention_same_dtype(*(flash_to_sdpa(t[n]) for n in "qkv"),
                                                               **options)[0]),
            inputs, torch.float32, grads=grads)


def test_sdpa_mask_dropout_is_pytorchs_own():
    """The same seed gives PyTorch's SDPA's result with the equivalent mask: its dropout stream, not ours."""
    q, k, v = (torch.randn(1, 2, 24, 8) for _ in range(3))
    rows, cols = torch.arange(24).view(-1, 1), torch.arange(24).view(1, -1)
    mask = (cols <= rows) & (cols >= rows - 5)
    torch.manual_seed(7)
    with mfa_torch.backend("sdpa-mask"):
        ours = mfa_torch.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True, window_size=(5, 0))
    torch.manual_seed(7)
    theirs = pytorch_paths.torch_sdpa(q, k, v, attn_mask=mask, dropout_p=0.3)
    assert torch.equal(ours, theirs)


def test_flex_reuses_block_masks_and_keeps_a_few(monkeypatch):
    monkeypatch.setattr(pytorch_paths, "_block_masks", type(pytorch_paths._block_masks)())
    t = make_inputs(SHAPES, torch.float32)  # the shapes of the flex cases: their compiled kernel serves these calls
    with mfa_torch.backend("flex"), torch.no_grad():
        for window in list(range(10)) + [0]:
            mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True, window_size=(window, 0),
                                                   enable_gqa=True)
    assert len(pytorch_paths._block_masks) == pytorch_paths._BLOCK_MASKS_KEPT
    assert list(pytorch_paths._block_masks)[-1][2] == (0, 0, 0)  # the band (left, right, offset) used last


def test_sdpa_mask_passes_the_gradient_of_a_float_mask():
    """A float attn_mask that requires grad gets PyTorch's gradient through the mask mfa_torch builds from it."""
    inputs = make_inputs({"q": (1, 2, 130, 16), "k": (1, 2, 150, 16), "v": (1, 2, 150, 16),
                          "mask": (1, 2, 130, 150)}, torch.float32)
    with mfa_torch.backend("sdpa-mask"):
        check_against_oracle(
            lambda t: mfa_torch.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=t["mask"],
                                                             window_size=(20, 0), alibi_slopes=ALIBI[:2]),
            lambda t: attention_fp64(t["q"], t["k"], t["v"], mask=t["mask"], window=(20, 0),
                                     alibi_slopes=ALIBI[:2])[0],
            lambda t: torch_attention_same_dtype(t["q"], t["k"], t["v"], mask=t["mask"], window=(20, 0),
                                                 alibi_slopes=ALIBI[:2])[0],
            inputs, torch.float32)


@pytest.mark.parametrize("softcap,alibi", [(0.0, False), (3.0, False), (0.0, True), (3.0, True)])
def test_flex_score_mods_apply_softcap_then_alibi(softcap, alibi):
    """The score_mod each combination gets, evaluated directly (flex_attention runs the same function)."""
    from mfa_torch.attention_call import AttentionCall
    q, k = torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 7, 4)
    slopes = torch.tensor([[0.5, 0.25]])
    call = AttentionCall(q, k, k, alibi=slopes if alibi else None, scale=1.0, softcap=softcap, bottom_right=True)
    score_mod = pytorch_paths._score_mod(call)
    if not softcap and not alibi:
        assert score_mod is None
        return
    score, h, i, j = torch.tensor(4.0), torch.tensor(1), torch.tensor(3), torch.tensor(1)
    want = softcap * torch.tanh(score / softcap) if softcap else score
    if alibi:
        want = want - 0.25 * abs(3 + (7 - 5) - 1)  # |i + S - L - j|, bottom-right aligned
    torch.testing.assert_close(score_mod(score, torch.tensor(0), h, i, j), want)
