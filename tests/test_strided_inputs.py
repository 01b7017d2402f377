"""q, k, v as strided views reach the attention ops in place: views of FlashAttention's packed qkv (B, S, 3, H, D)
and kv (B, S, 2, H, D) tensors, of (B, S, H, D) tensors transposed, and of varlen (total, 3, H, D) tensors. Forward
and every gradient (the backward reads the saved views) against the fp64 oracle with the 2x-PyTorch-error rule, on
the reference route and the Metal kernels (emulator here, GPU with `pytest -m mps`); and no copy of q, k, v reaches
the kernels."""
import contextlib

import pytest
import torch

import mfa_torch
from mfa_torch.metal import executors
from kernel_routes import DEVICE, KERNEL_ROUTES, with_dtypes
from oracle import DTYPES, attention_fp64, check_against_oracle, make_inputs, torch_attention_same_dtype, \
    varlen_attention_fp64

ROUTES = [pytest.param("reference", id="reference"), *KERNEL_ROUTES]


@contextlib.contextmanager
def _route(route):
    """The route's backend; yields the device its tensors live on."""
    with mfa_torch.backend(route):
        yield DEVICE.get(route, "cpu")


# How each layout's leaves become canonical (B, H, L, D) views, sharing the leaves' storage.
LAYOUTS = {
    "qkv packed": lambda t: [t["qkv"][:, :, i].transpose(1, 2) for i in range(3)],
    "kv packed": lambda t: [t["q"].transpose(1, 2), *(t["kv"][:, :, i].transpose(1, 2) for i in range(2))],
    "bshd": lambda t: [t[n].transpose(1, 2) for n in "qkv"],
    "strided head dim": lambda t: [t[n][..., ::2] for n in "qkv"],  # the one layout the Metal route copies
}


def _attention(q, k, v, mask=None, window=(-1, -1), bottom_right=False, cu_seqlens=(None, None), max_seqlens=(0, 0)):
    """The op itself on the views: nothing between them and the route's kernels."""
    out, _ = torch.ops.mfa.attention_forward(q, k, v, mask, None, *cu_seqlens, *max_seqlens, q.shape[-1] ** -0.5,
                                             *window, bottom_right, 0.0, 0.0, None)
    return out


CASES = [
    dict(layout="qkv packed", shapes={"qkv": (2, 23, 3, 3, 32)}, window=(-1, 0)),
    dict(layout="qkv packed", shapes={"qkv": (1, 40, 3, 2, 40)}),
    dict(layout="kv packed", shapes={"q": (2, 17, 4, 32), "kv": (2, 29, 2, 2, 32)}, window=(-1, 0),
         bottom_right=True),
    dict(layout="kv packed", shapes={"q": (2, 17, 4, 32), "kv": (2, 29, 2, 1, 32)}, mask="bool"),
    dict(layout="bshd", shapes={"q": (2, 13, 2, 32), "k": (2, 21, 2, 32), "v": (2, 21, 2, 24)}, mask="float",
         window=(5, 3)),
    dict(layout="strided head dim", shapes={"q": (1, 2, 11, 64), "k": (1, 2, 19, 64), "v": (1, 2, 19, 64)},
         window=(-1, 0)),
]


def _case_id(value):
    """A case's id: its options (not its shapes), or the dtype's name."""
    if isinstance(value, dict):
        return "-".join(f"{k}={v}" for k, v in value.items() if k != "shapes")
    return str(value).removeprefix("torch.")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case, dtype", with_dtypes(CASES, DTYPES), ids=_case_id)
def test_views_forward_and_gradients(route, case, dtype):
    views = LAYOUTS[case["layout"]]
    inputs = make_inputs(case["shapes"], dtype, seed=5)
    q, k, _ = views(inputs)
    (B, Hq, L, _), S = q.shape, k.shape[2]
    mask = None
    if case.get("mask") == "bool":
        mask = torch.rand(B, 1, L, S, generator=torch.Generator().manual_seed(1)) > 0.3
    elif case.get("mask") == "float":
        mask = (torch.randn(1, Hq, L, S, generator=torch.Generator().manual_seed(1)) * 2).to(dtype)
    window, bottom_right = case.get("window", (-1, -1)), case.get("bottom_right", False)
    oracle_options = dict(mask=mask, window=window, align="bottom_right" if bottom_right else "upper_left")

    def ours(t):
        with _route(route) as device:
            on = {name: x.to(device) for name, x in t.items()}
            return _attention(*views(on), None if mask is None else mask.to(device), window, bottom_right).cpu()

    check_against_oracle(ours, lambda t: attention_fp64(*views(t), **oracle_options),
                         lambda t: torch_attention_same_dtype(*views(t), **oracle_options), inputs, dtype)


def _varlen_views(t):
    """(1, H, total, D) views of the packed tokens, as flash_attn_varlen_*packed_func give the op."""
    canonical = lambda x: x.transpose(0, 1).unsqueeze(0)  # noqa: E731
    if "qkv" in t:
        return [canonical(t["qkv"][:, i]) for i in range(3)]
    return [canonical(t["q"]), *(canonical(t["kv"][:, i]) for i in range(2))]


# Sequences with an empty one, a single token and keys longer than queries; qkv packing shares the query lengths.
LENGTHS_Q, LENGTHS_K = [5, 0, 17, 1, 9], [8, 3, 17, 40, 2]
VARLEN_CASES = [dict(layout="qkv packed", heads=(2, 2), causal=True),
                dict(layout="kv packed", heads=(4, 2), causal=False)]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case, dtype", with_dtypes(VARLEN_CASES, DTYPES), ids=_case_id)
def test_varlen_views_forward_and_gradients(route, case, dtype):
    packed_qkv = case["layout"] == "qkv packed"
    lengths_q, lengths_k = LENGTHS_Q, LENGTHS_Q if packed_qkv else LENGTHS_K
    Hq, Hk = case["heads"]
    cu = lambda n: torch.tensor([0] + n, dtype=torch.int32).cumsum(0, dtype=torch.int32)  # noqa: E731
    cu_q, cu_k = cu(lengths_q), cu(lengths_k)
    total_q, total_k = int(cu_q[-1]), int(cu_k[-1])
    shapes = {"qkv": (total_q, 3, Hq, 32)} if packed_qkv else {"q": (total_q, Hq, 32), "kv": (total_k, 2, Hk, 32)}
    inputs = make_inputs(shapes, dtype, seed=8)
    max_seqlens = (max(lengths_q), max(lengths_k))
    window = (-1, 0) if case["causal"] else (-1, -1)

    def ours(t):
        with _route(route) as device:
            on = {name: x.to(device) for name, x in t.items()}
            out = _attention(*_varlen_views(on), window=window, bottom_right=True,
                             cu_seqlens=(cu_q.to(device), cu_k.to(device)), max_seqlens=max_seqlens)
            return out[0].transpose(0, 1).cpu()

    def oracle(t):
        q, k, v = (x[0].transpose(0, 1) for x in _varlen_views(t))
        return varlen_attention_fp64(q, k, v, cu_q, cu_k, causal=case["causal"])[0]

    # PyTorch has no varlen attention in every dtype to measure against: the dtype's epsilon bounds the error
    check_against_oracle(ours, oracle, None, inputs, dtype)


@pytest.mark.parametrize("route", KERNEL_ROUTES)
def test_no_copy_of_q_k_v_reaches_the_kernels(route, monkeypatch):
    """The tensors the Metal route binds as q, k, v (forward and backward) live in the packed input's storage."""
    tables = []
    run = executors.run

    def recording_run(route_name, plan, tensors, checks=None, family=None):
        tables.append(dict(tensors))
        return run(route_name, plan, tensors, checks, family)

    monkeypatch.setattr(executors, "run", recording_run)
    device = DEVICE[route]
    qkv = torch.randn(2, 9, 3, 2, 16, device=device, requires_grad=True)
    varlen_qkv = torch.randn(12, 3, 2, 16, device=device, requires_grad=True)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32, device=device)
    with mfa_torch.backend(route):
        _attention(*LAYOUTS["qkv packed"]({"qkv": qkv})).sum().backward()
        _attention(*_varlen_views({"qkv": varlen_qkv}), cu_seqlens=(cu, cu), max_seqlens=(7, 7)).sum().backward()
    assert len(tables) == 4, "a forward and a backward per call"
    for packed, calls in ((qkv, tables[:2]), (varlen_qkv, tables[2:])):
        for table in calls:
            for name in "qkv":
                assert table[name].untyped_storage().data_ptr() == packed.untyped_storage().data_ptr(), name
