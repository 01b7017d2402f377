"""Test oracle: naive, materialised fp64 attention and matmul, plus the tolerance rule.

This module is the *independent* reference for the whole test suite (and for the Metal kernel tests
of later issues). It never imports mfa_torch. Everything here is written to be obviously right rather
than fast: scores are materialised as a full (..., H, L, S) tensor in float64.

Layout used by ``attention_fp64``: torch's SDPA layout, query (N..., Hq, L, E), key (N..., Hk, S, E),
value (N..., Hk, S, Ev). Helpers convert from the FlashAttention layout (B, S, H, D).

Tolerance rule (DESIGN section 7, after FlashAttention's own tests): for a result computed in dtype
``dt``, ``max|ours - oracle| <= 2 * max|torch_same_dtype - oracle| + eps``, where torch_same_dtype is
PyTorch's own implementation run in ``dt`` (``torch_attention_same_dtype`` below) and
``eps = EPS_REL[dt] * max|oracle| + EPS_ABS[dt]``.

Choice of eps (relative to the magnitude of the oracle tensor, so it means the same thing for outputs
of size ~1 and for gradients of size ~1e-2):
  * float16: 2**-10 (~9.8e-4), one ulp at the magnitude of the largest element: a correct kernel whose
    final rounding goes the other way from torch's on the largest element can never fail because of it.
  * bfloat16: 2**-7 (~7.8e-3), again one ulp (bf16 has 8 significant bits); 1e-3 would be below half
    an ulp and would fail correct kernels on tiny tensors where torch's rounding happens to be lucky.
  * float32: 1e-5 (~84 ulps at the largest element): room for a different accumulation order (blocked
    online softmax vs torch's kernel) over the sequence lengths used in tests (<= a few hundred).
  * float64: 1e-10 (we compare directly; torch's route in fp64 is essentially exact).
A small absolute floor (EPS_ABS) keeps all-zero references (e.g. fully masked rows) from demanding an
exact zero from a correct but differently ordered computation; it is far below any real error.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "attention_fp64",
    "allowed_mask",
    "bias_fp64",
    "torch_attention_same_dtype",
    "attention_fp32_in_order",
    "varlen_attention_fp64",
    "flash_to_sdpa",
    "sdpa_to_flash",
    "matmul_fp64",
    "linear_fp64",
    "max_err",
    "tolerance",
    "assert_rule",
    "assert_close_fp64",
    "EPS_REL",
    "EPS_ABS",
    "make_inputs",
    "check_against_oracle",
    "expected_lse_dtype",
    "DTYPES",
    "DT_IDS",
]

# The low-precision dtypes every feature is tested in (fp64 has its own smoke tests).
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DT_IDS = ["fp32", "fp16", "bf16"]

EPS_REL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2.0 ** -10,
    torch.bfloat16: 2.0 ** -7,
}
EPS_ABS = {
    torch.float64: 1e-12,
    torch.float32: 1e-7,
    torch.float16: 1e-5,
    torch.bfloat16: 1e-4,
}

_ALIGNS = (None, "upper_left", "bottom_right")


# ----------------------------------------------------------------------------------------------------
# masks


def _offset(L: int, S: int, align: str) -> int:
    """Query i is aligned with key i + offset."""
    if align == "upper_left":
        return 0
    if align == "bottom_right":
        return S - L
    raise ValueError(f"align must be 'upper_left' or 'bottom_right', got {align!r}")


def _resolve_align(causal, align):
    if causal not in _ALIGNS:
        raise ValueError(f"causal must be one of {_ALIGNS}, got {causal!r}")
    if align not in _ALIGNS:
        raise ValueError(f"align must be one of {_ALIGNS}, got {align!r}")
    if causal is not None and align is not None and causal != align:
        raise ValueError("causal and align disagree")
    return causal or align or "upper_left"


def allowed_mask(L: int, S: int, *, causal=None, window=None, align=None, device="cpu") -> torch.Tensor:
    """(L, S) bool: True where query i may attend key j under causal/window (no user mask).

    causal: None, "upper_left" (i sees j <= i) or "bottom_right" (i sees j <= i + S - L).
    window: None or (left, right), -1 unbounded: i sees j in [i + off - left, i + off + right],
            aligned like ``causal`` (or ``align``; default upper-left). Causal caps right at 0.
    """
    a = _resolve_align(causal, align)
    off = _offset(L, S, a)
    i = torch.arange(L, device=device).view(L, 1)
    j = torch.arange(S, device=device).view(1, S)
    ok = torch.ones(L, S, dtype=torch.bool, device=device)
    d = j - (i + off)  # key distance to the right of the aligned diagonal
    if causal is not None:
        ok &= d <= 0
    if window is not None:
        left, right = window
        if left >= 0:
            ok &= d >= -left
        if right >= 0:
            ok &= d <= right
    return ok


def _alibi_fp64(slopes: torch.Tensor, Hq: int, L: int, S: int, align: str) -> torch.Tensor:
    """(..., Hq, L, S) fp64 bias -slope * |i + off - j|."""
    slopes = slopes.to(torch.float64)
    if slopes.shape[-1] != Hq:
        raise ValueError(f"alibi_slopes last dim {slopes.shape[-1]} != Hq {Hq}")
    off = _offset(L, S, align)
    i = torch.arange(L, dtype=torch.float64, device=slopes.device).view(L, 1)
    j = torch.arange(S, dtype=torch.float64, device=slopes.device).view(1, S)
    dist = (i + off - j).abs()
    return -slopes[..., None, None] * dist


def bias_fp64(
    Hq: int,
    L: int,
    S: int,
    *,
    mask=None,
    causal=None,
    window=None,
    alibi_slopes=None,
    align=None,
    device="cpu",
) -> torch.Tensor:
    """Materialised additive fp64 bias (-inf where not allowed) equivalent to the given features.

    Broadcastable against (N..., Hq, L, S). Used to feed torch's own SDPA for features it lacks.
    Softcap cannot be expressed as a bias (it acts on the scores before the bias).
    """
    a = _resolve_align(causal, align)
    bias = torch.zeros(L, S, dtype=torch.float64, device=device)
    ok = allowed_mask(L, S, causal=causal, window=window, align=a, device=device)
    bias = bias.masked_fill(~ok, float("-inf"))
    if alibi_slopes is not None:
        bias = bias + _alibi_fp64(alibi_slopes.to(device), Hq, L, S, a)
    if mask is not None:
        if mask.dtype == torch.bool:
            bias = bias.masked_fill(~mask.to(device), float("-inf"))
        else:
            bias = bias + mask.to(device=device, dtype=torch.float64)
    return bias


# ----------------------------------------------------------------------------------------------------
# the oracle


def _repeat_kv(k: torch.Tensor, Hq: int) -> torch.Tensor:
    Hk = k.shape[-3]
    if Hq == Hk:
        return k
    if Hk == 0 or Hq % Hk != 0:
        raise ValueError(f"Hq={Hq} is not a multiple of Hk={Hk}")
    return k.repeat_interleave(Hq // Hk, dim=-3)


def _safe_softmax_lse(s: torch.Tensor):
    """Softmax over the last dim and its natural-log LSE; fully -inf rows give p=0, lse=-inf.

    Differentiable (fp64 autograd) and NaN-free, including the gradient of masked rows (zero).
    """
    m = s.detach().amax(dim=-1, keepdim=True) if s.shape[-1] > 0 else s.new_full(s.shape[:-1] + (1,), float("-inf"))
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)  # exp(-inf) = 0, and masked_fill'ed entries carry no gradient
    l = e.sum(dim=-1, keepdim=True)
    live = l > 0
    p = e / torch.where(live, l, torch.ones_like(l))
    lse = torch.where(live, m + torch.log(torch.where(live, l, torch.ones_like(l))), torch.full_like(l, float("-inf")))
    return p, lse.squeeze(-1)


def _with_sink_column(s: torch.Tensor, sinks: Optional[torch.Tensor]) -> torch.Tensor:
    """Scores (..., Hq, L, S) with the sinks (Hq,) appended as column S of every row (or unchanged)."""
    if sinks is None:
        return s
    column = sinks.to(s.dtype).view(-1, 1, 1).expand(*s.shape[:-1], 1)
    return torch.cat([s, column], dim=-1)


def attention_fp64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: Optional[torch.Tensor] = None,
    causal: Optional[str] = None,
    window: Optional[Tuple[int, int]] = None,
    alibi_slopes: Optional[torch.Tensor] = None,
    softcap: float = 0.0,
    scale: Optional[float] = None,
    dropout_keep: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    align: Optional[str] = None,
    sinks: Optional[torch.Tensor] = None,
):
    """Naive fp64 attention. Returns (out, lse), both float64.

    q (N..., Hq, L, E), k (N..., Hk, S, E), v (N..., Hk, S, Ev); GQA by repeating kv heads
    (query head h uses kv head h // (Hq // Hk)). Inputs of any floating dtype are upcast with
    ``.double()`` (differentiable, so gradients reach the caller's leaves).

    mask: bool (True = attend) or float (added), broadcastable to (N..., Hq, L, S).
    causal: None | "upper_left" | "bottom_right". window: (left, right), -1 unbounded, aligned like
    causal (or ``align``; upper-left by default). alibi_slopes: (Hq,) or (N..., Hq), adds
    -slope * |i + off - j| with the same alignment. softcap > 0: s = softcap * tanh(s / softcap) on the
    scaled scores, before alibi and masks. dropout_keep: bool keep mask broadcastable to the scores;
    kept probabilities are scaled by 1 / (1 - dropout_p); lse is unaffected by dropout.
    sinks (Hq,): one more score column per row, sinks[h], whose probability is dropped before the value product.
    Rows no key may attend: out 0, lse -inf (or the sink), zero gradients.
    """
    a = _resolve_align(causal, align)
    q64, k64, v64 = q.double(), k.double(), v.double()
    Hq, L, E = q64.shape[-3], q64.shape[-2], q64.shape[-1]
    S = k64.shape[-2]
    k64 = _repeat_kv(k64, Hq)
    v64 = _repeat_kv(v64, Hq)
    if scale is None:
        scale = 1.0 / math.sqrt(E) if E > 0 else 1.0
    s = torch.matmul(q64, k64.transpose(-1, -2)) * scale
    if softcap and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        s = s + _alibi_fp64(alibi_slopes.to(s.device), Hq, L, S, a)
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask.to(s.device), float("-inf"))
        else:
            s = s + mask.double()
    ok = allowed_mask(L, S, causal=causal, window=window, align=a, device=s.device)
    s = s.masked_fill(~ok, float("-inf"))
    p, lse = _safe_softmax_lse(_with_sink_column(s, sinks))
    p = p if sinks is None else p[..., :-1]
    if dropout_keep is not None:
        p = p * dropout_keep.to(p.device, torch.float64) / (1.0 - dropout_p)
    out = torch.matmul(p, v64)
    return out, lse


def torch_attention_same_dtype(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask=None,
    causal=None,
    window=None,
    alibi_slopes=None,
    softcap: float = 0.0,
    scale=None,
    dropout_keep=None,
    dropout_p: float = 0.0,
    align=None,
    sinks=None,
):
    """PyTorch's own implementation run in q.dtype: the yardstick of the tolerance rule.

    Returns (out, lse) where out is in q.dtype (differentiable w.r.t. q, k, v and a float mask) and lse
    is fp32 (from the scores computed in q.dtype; not differentiable-tested).
    Without softcap/dropout: torch.nn.functional.scaled_dot_product_attention with the features it lacks
    (window, ALiBi, bottom-right causal) folded into a materialised float mask in q.dtype. With softcap or
    a given dropout keep mask or sinks (not expressible through SDPA): the composite math in q.dtype with torch ops
    (sinks as one more score column, dropped after the softmax, as GPT-OSS's eager attention does).
    """
    dt = q.dtype
    a = _resolve_align(causal, align)
    Hq, L, E = q.shape[-3], q.shape[-2], q.shape[-1]
    S = k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(E) if E > 0 else 1.0
    user_float_mask = mask if (mask is not None and mask.dtype != torch.bool) else None
    struct = bias_fp64(
        Hq, L, S, mask=mask if (mask is not None and mask.dtype == torch.bool) else None,
        causal=causal, window=window, alibi_slopes=alibi_slopes, align=a, device=q.device,
    ).to(dt)
    kk, vv = _repeat_kv(k, Hq), _repeat_kv(v, Hq)
    # lse from scores computed in dt
    with torch.no_grad():
        s_lp = torch.matmul(q, kk.transpose(-1, -2)) * scale
        if softcap and softcap > 0:
            s_lp = softcap * torch.tanh(s_lp / softcap)
        s_lp = s_lp + struct
        if user_float_mask is not None:
            s_lp = s_lp + user_float_mask.detach().to(dt)
        s_lp = _with_sink_column(s_lp, None if sinks is None else sinks.detach().to(dt))
        lse = torch.logsumexp(s_lp.float(), dim=-1) if s_lp.shape[-1] > 0 else s_lp.float().new_full(s_lp.shape[:-1], float("-inf"))
    if not (softcap and softcap > 0) and dropout_keep is None and sinks is None:
        full = struct if user_float_mask is None else struct + user_float_mask
        out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=full, scale=scale)
        return out, lse
    s = torch.matmul(q, kk.transpose(-1, -2)) * scale
    if softcap and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    s = s + struct
    if user_float_mask is not None:
        s = s + user_float_mask
    s = _with_sink_column(s, None if sinks is None else sinks.to(dt))
    dead = torch.isneginf(s).all(dim=-1, keepdim=True)
    p = torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    p = p if sinks is None else p[..., :-1]
    if dropout_keep is not None:
        p = p * dropout_keep.to(dt) / (1.0 - dropout_p)
    out = torch.matmul(p, vv)
    return out, lse


def varlen_attention_fp64(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal=False, window=(-1, -1),
                          alibi_slopes=None, softcap=0.0, scale=None):
    """FlashAttention varlen oracle: q (total_q, H, D), k/v (total_k, Hk, D); per sequence dense oracle
    with bottom-right alignment. Returns (out (total_q, H, Dv) fp64, lse (H, total_q) fp64)."""
    H = q.shape[1]
    outs, lses = [], []
    cq, ck = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    for b in range(len(cq) - 1):
        qb = q[cq[b]:cq[b + 1]].transpose(0, 1)  # (H, Lb, D)
        kb = k[ck[b]:ck[b + 1]].transpose(0, 1)
        vb = v[ck[b]:ck[b + 1]].transpose(0, 1)
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
        win = None if tuple(window) == (-1, -1) else tuple(window)
        o, l = attention_fp64(qb, kb, vb, causal="bottom_right" if causal else None, window=win,
                              alibi_slopes=slopes, softcap=softcap, scale=scale, align="bottom_right")
        outs.append(o.transpose(0, 1))
        lses.append(l)
    out = torch.cat(outs, 0) if outs else q.new_zeros((0, H, v.shape[-1]), dtype=torch.float64)
    lse = torch.cat(lses, 1) if lses else q.new_zeros((H, 0), dtype=torch.float64)
    return out, lse


def flash_to_sdpa(x: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) -> (B, H, S, D)."""
    return x.transpose(-3, -2)


def sdpa_to_flash(x: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> (B, S, H, D)."""
    return x.transpose(-3, -2)


# ----------------------------------------------------------------------------------------------------
# gemm oracle


def matmul_fp64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.matmul semantics, computed as a broadcast multiply-sum in fp64 (no BLAS call)."""
    a64, b64 = a.double(), b.double()
    a_vec, b_vec = a64.dim() == 1, b64.dim() == 1
    if a_vec:
        a64 = a64.unsqueeze(0)
    if b_vec:
        b64 = b64.unsqueeze(-1)
    # (..., M, K, 1) * (..., 1, K, N) summed over K
    out = (a64.unsqueeze(-1) * b64.unsqueeze(-3)).sum(dim=-2)
    if a_vec:
        out = out.squeeze(-2)
    if b_vec:
        out = out.squeeze(-1)
    return out


def linear_fp64(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = matmul_fp64(x, w.transpose(-1, -2)) if w.dim() == 2 else matmul_fp64(x, w)
    if b is not None:
        out = out + b.double()
    return out


# ----------------------------------------------------------------------------------------------------
# tolerance


def expected_lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The API contract (DESIGN section 6, README): lse is fp32, except fp64 for fp64 inputs (whose gradients
    would otherwise be limited by fp32 log-sum-exp precision)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Max-abs error in fp64; NaN anywhere -> inf (a NaN is never within tolerance)."""
    assert x.shape == ref.shape, f"shape {tuple(x.shape)} != reference shape {tuple(ref.shape)}"
    if x.numel() == 0:
        return 0.0
    d = x.detach().double() - ref.detach().double()
    both_inf_same = torch.isinf(x.detach().double()) & torch.isinf(ref.detach().double()) & (
        torch.sign(x.detach().double()) == torch.sign(ref.detach().double()))
    d = torch.where(both_inf_same, torch.zeros_like(d), d)
    if torch.isnan(d).any():
        return math.inf
    return d.abs().max().item()


def attention_fp32_in_order(q, k, v, grad_out, scale):
    """Attention forward and backward (out, dq, dk, dv) in float32 arithmetic in a fixed order, identical on every
    host: each operation rounded to float32 (computed in float64 on float32 values, then rounded), every sum taken
    from the first term to the last, the softmax backward as PyTorch's (D = rowsum(P * dP)). A yardstick for what
    float32 itself costs where PyTorch's CPU result depends on the host's BLAS kernels and their summation order.
    q (..., L, E), k (..., S, E), v (..., S, Ev), grad_out (..., L, Ev); no mask, no causal structure."""
    r = lambda x: x.float().double()  # noqa: E731  (round to float32)

    def mm(a, b):  # (..., M, K) x (..., K, N), summed over K in order, one rounding per step
        acc = torch.zeros(*a.shape[:-1], b.shape[-1], dtype=torch.float64)
        for i in range(a.shape[-1]):
            acc = r(acc + a[..., :, i:i + 1] * b[..., i:i + 1, :])
        return acc

    def rowsum(x):
        acc = torch.zeros(x.shape[:-1], dtype=torch.float64)
        for i in range(x.shape[-1]):
            acc = r(acc + x[..., i])
        return acc

    q, k, v, dO = (r(t.detach()) for t in (q, k, v, grad_out))
    s = r(mm(q, k.transpose(-1, -2)) * scale)
    e = r(torch.exp(r(s - s.amax(-1, keepdim=True))))
    p = r(e / rowsum(e).unsqueeze(-1))
    out = mm(p, v)
    dp = mm(dO, v.transpose(-1, -2))
    ds = r(p * r(dp - rowsum(r(p * dp)).unsqueeze(-1)))
    dq = r(mm(ds, k) * scale)
    dk = r(mm(ds.transpose(-1, -2), q) * scale)
    dv = mm(p.transpose(-1, -2), dO)
    return tuple(x.float() for x in (out, dq, dk, dv))


def tolerance(ref: torch.Tensor, torch_result: Optional[torch.Tensor], dtype: torch.dtype) -> float:
    """Allowed max-abs error: 2 * err(torch in dtype) + EPS_REL[dtype] * max|ref| + EPS_ABS[dtype]."""
    r = ref.detach().double()
    finite = r[torch.isfinite(r)]
    mag = finite.abs().max().item() if finite.numel() else 0.0
    base = 0.0
    if torch_result is not None:
        base = 2.0 * max_err(torch_result, ref)
    return base + EPS_REL[dtype] * mag + EPS_ABS[dtype]


def assert_rule(name: str, ours: torch.Tensor, torch_result: Optional[torch.Tensor], ref: torch.Tensor,
                dtype: torch.dtype) -> None:
    """The tolerance rule: err(ours) <= 2 * err(torch same dtype) + eps (see module docstring)."""
    assert ours is not None, f"{name}: got None"
    assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    e = max_err(ours, ref)
    tol = tolerance(ref, torch_result, dtype)
    te = max_err(torch_result, ref) if torch_result is not None else float("nan")
    assert e <= tol, f"{name} ({dtype}): max err {e:.3e} > tol {tol:.3e} (torch's own err {te:.3e})"


def assert_close_fp64(name: str, ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """For dtypes without a torch yardstick (or fp64): err <= eps only."""
    assert_rule(name, ours, None, ref, dtype)


# ----------------------------------------------------------------------------------------------------
# test driver shared by the API test files


def make_inputs(shapes: dict, dtype: torch.dtype, *, seed: int = 0, device="cpu", scale_by: dict = None):
    """Random leaves named like ``shapes`` (name -> shape), rounded to ``dtype``, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shp in shapes.items():
        t = torch.randn(*shp, generator=g, dtype=torch.float64)
        if scale_by and name in scale_by:
            t = t * scale_by[name]
        out[name] = t.to(device=device, dtype=dtype).requires_grad_()
    return out


def _fresh(inputs: dict, dtype=None):
    res = {}
    for n, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad:
            x = t.detach().clone()
            if dtype is not None:
                x = x.to(dtype)
            res[n] = x.requires_grad_()
        else:
            res[n] = t
    return res


def _as_pair(r):
    if isinstance(r, (tuple, list)):
        return r[0], (r[1] if len(r) > 1 else None)
    return r, None


def check_against_oracle(ours_fn, oracle_fn, torch_fn, inputs: dict, dtype: torch.dtype, *,
                         grads: bool = True, check_lse: bool = False, seed: int = 1234):
    """Run ours / fp64 oracle / torch-in-dtype on the same leaves; apply the tolerance rule to the
    output, (optionally) the lse, and the gradient of every input that requires grad.

    Each fn takes a dict name -> tensor and returns out or (out, lse). ``torch_fn`` may be None (then
    only eps applies, used for fp64). Returns (ours_out, ref_out) for extra checks.
    """
    grad_names = [n for n, t in inputs.items()
                  if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad] if grads else []
    ours_in = _fresh(inputs)
    ref_in = _fresh(inputs, torch.float64)
    out, lse = _as_pair(ours_fn(ours_in))
    ref, ref_lse = _as_pair(oracle_fn(ref_in))
    tout, tlse = (None, None)
    t_in = None
    if torch_fn is not None:
        t_in = _fresh(inputs)
        tout, tlse = _as_pair(torch_fn(t_in))
    assert out.dtype == dtype, f"output dtype {out.dtype} != input dtype {dtype}"
    assert_rule("out", out, tout, ref, dtype)
    if check_lse:
        assert lse is not None, "lse missing"
        want = expected_lse_dtype(dtype)
        assert lse.dtype == want, f"lse dtype {lse.dtype}, expected {want} for {dtype} inputs"
        assert tuple(lse.shape) == tuple(ref_lse.shape), f"lse shape {tuple(lse.shape)} != {tuple(ref_lse.shape)}"
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "lse -inf pattern differs from oracle"
        assert not torch.isnan(lse).any(), "NaN in lse"
        # lse is fp32 for every input dtype: for fp64 inputs it is judged at fp32 precision
        assert_rule("lse", lse, tlse, ref_lse, torch.float32 if dtype == torch.float64 else dtype)
    if grad_names and out.numel() > 0:
        g = torch.Generator().manual_seed(seed)
        dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        d_ours = torch.autograd.grad(out, [ours_in[n] for n in grad_names], dout.to(out.dtype), allow_unused=True)
        d_ref = torch.autograd.grad(ref, [ref_in[n] for n in grad_names], dout, allow_unused=True)
        d_t = [None] * len(grad_names)
        if torch_fn is not None:
            d_t = torch.autograd.grad(tout, [t_in[n] for n in grad_names], dout.to(tout.dtype), allow_unused=True)
        for n, a, r, t in zip(grad_names, d_ours, d_ref, d_t):
            if r is None:
                r = torch.zeros_like(ref_in[n])
            if a is None:
                a = torch.zeros_like(ours_in[n])
            if t is None and torch_fn is not None:
                t = torch.zeros_like(t_in[n])
            assert a.dtype == ours_in[n].dtype, f"grad {n} dtype {a.dtype} != {ours_in[n].dtype}"
            assert_rule(f"grad {n}", a, t, r, dtype)
    return out, ref
