"""matmul and linear with torch semantics, computed by the mfa::gemm op (Metal GEMM on MPS)."""
import math

import torch

from . import ops  # noqa: F401  (registers the ops' kernels and autograd)
from . import routing
from .metal import gemm as metal_gemm
from ._validation import check_float_tensors, require


def _batched(t, batch):
    """(..., R, C) -> (1 or prod(batch), R, C) for the op: a batch broadcast entirely stays 1 (stride 0 in
    spirit, never expanded); a partially broadcast one is expanded over the batch dims only."""
    lead = t.shape[:-2]
    if all(d == 1 for d in lead):
        return t.reshape(1, *t.shape[-2:])
    return t.expand(*batch, *t.shape[-2:]).reshape(math.prod(batch), *t.shape[-2:])


def matmul(input, other):
    """Drop-in for torch.matmul (1-D operands, batch broadcasting) on float tensors."""
    check_float_tensors(input=input, other=other)
    require(input.dim() >= 1 and other.dim() >= 1, "input and other must have at least 1 dimension, got shapes "
                                                   f"{tuple(input.shape)} and {tuple(other.shape)}")
    a = input.unsqueeze(0) if input.dim() == 1 else input
    b = other.unsqueeze(-1) if other.dim() == 1 else other
    require(a.shape[-1] == b.shape[-2], f"matmul: input {tuple(input.shape)} and other {tuple(other.shape)} have "
                                        f"different inner dimensions ({a.shape[-1]} vs {b.shape[-2]})")
    try:
        batch = tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except RuntimeError:
        require(False, f"matmul: batch dimensions of input {tuple(input.shape)} and other {tuple(other.shape)} are "
                       "not broadcastable")
    route(input)
    out = torch.ops.mfa.gemm(_batched(a, batch), _batched(b, batch), None)
    out = out.reshape(*batch, a.shape[-2], b.shape[-1]) if batch else out.reshape(a.shape[-2], b.shape[-1])
    if input.dim() == 1:
        out = out.squeeze(-2)
    if other.dim() == 1:
        out = out.squeeze(-1)
    return out


def route(input):
    """The route of a GEMM whose first operand is `input` (raises if the selected backend cannot take it)."""
    return routing.choose(input.device, metal_lacks=metal_gemm.metal_lacks(input.dtype))


def linear(input, weight, bias=None):
    """Drop-in for torch.nn.functional.linear: input @ weight^T + bias, the transpose read through strides."""
    tensors = dict(input=input, weight=weight) if bias is None else dict(input=input, weight=weight, bias=bias)
    check_float_tensors(**tensors)
    require(weight.dim() in (1, 2), f"weight must be 1-D or 2-D, got shape {tuple(weight.shape)}")
    require(input.dim() >= 1, "input must have at least 1 dimension")
    require(input.shape[-1] == weight.shape[-1],
            f"input features ({input.shape[-1]}) must equal weight's last dim ({weight.shape[-1]})")
    out_features = () if weight.dim() == 1 else (weight.shape[0],)
    if bias is not None:
        require(bias.dim() <= 1 and bias.numel() in (1,) + out_features,
                f"bias must have shape {out_features or '()'}, got {tuple(bias.shape)}")
    if weight.dim() == 1 or bias is not None and bias.shape != out_features:
        out = matmul(input, weight.t() if weight.dim() == 2 else weight)
        return out if bias is None else out + bias
    route(input)
    rows = input.reshape(1, math.prod(input.shape[:-1]), input.shape[-1])
    out = torch.ops.mfa.gemm(rows, weight.t().unsqueeze(0), bias)
    return out.reshape(*input.shape[:-1], weight.shape[0])
