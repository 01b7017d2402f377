"""Attention PyTorch's SDPA cannot take as it is, off Apple GPUs: a causal sliding window, causal ALiBi and causal
softcap. mfa_torch (on the route `explain` names) is timed beside the two ways a PyTorch user would write them:
PyTorch's SDPA given the equivalent mask, and flex_attention compiled with the equivalent block mask and score_mod."""
import dataclasses

import torch
import torch.nn.functional as F

import mfa_torch
from . import implementations, run
from .progress import progress

STRUCTURES = ("window", "alibi", "softcap")
WINDOW, SOFTCAP = 256, 50.0
SIZES, QUICK_SIZES = (1024, 2048), (1024,)
HEADS, HEAD_DIM = 8, 64
IMPLEMENTATIONS = ("mfa_torch", "torch+mask", "flex")
COLUMNS = ("impl", "device", "route", "pass", "structure", "dtype", "H", "L", "D", "median_ms", "extra_mem_mib",
           "samples", "calls_per_sample", "note")


@dataclasses.dataclass(frozen=True)
class StructuredCase:
    structure: str
    dtype: torch.dtype
    L: int
    D: int = HEAD_DIM
    H: int = HEADS

    @property
    def dtype_name(self):
        return str(self.dtype).removeprefix("torch.")

    def label(self):
        return f"{self.structure} {self.dtype_name} H={self.H} D={self.D} L={self.L}"


def cases(dev, quick, dtypes=None, sizes=None, head_dims=None):
    """The structured cases for a non-MPS device (on Apple GPUs mfa_torch's Metal kernels take them all)."""
    if dev.type == "mps":
        return ()
    return tuple(StructuredCase(s, d, L, D) for s in STRUCTURES for d in (dtypes or (torch.float32,))
                 for D in (head_dims or (HEAD_DIM,)) for L in (sizes or (QUICK_SIZES if quick else SIZES)))


def _slopes(H):
    """ALiBi's slopes for H heads: 2^(-8 (h + 1) / H)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])


def _mfa_kwargs(case, slopes):
    return {"window": dict(window_size=(WINDOW, 0)), "alibi": dict(alibi_slopes=slopes),
            "softcap": dict(softcap=SOFTCAP)}[case.structure]


def _sdpa_mask(case, slopes, dev):
    """The mask that gives PyTorch's SDPA the same semantics, or None when none does (a softcap)."""
    rows = torch.arange(case.L, device=dev).view(-1, 1)
    cols = torch.arange(case.L, device=dev).view(1, -1)
    if case.structure == "window":
        return (cols <= rows) & (cols >= rows - WINDOW)
    if case.structure == "alibi":
        bias = -slopes.to(dev).view(-1, 1, 1) * (rows - cols).abs()
        return bias.masked_fill(cols > rows, float("-inf")).to(case.dtype)
    return None


def _flex(case, slopes, dev):
    """(compiled flex_attention, block mask, score_mod) with the same semantics."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if case.structure == "window":
        def allowed(b, h, q, kv):
            return (kv <= q) & (kv >= q - WINDOW)
    else:
        def allowed(b, h, q, kv):
            return kv <= q
    slopes = slopes.to(dev)

    def alibi(score, b, h, q, kv):
        return score - slopes[h] * (q - kv).abs()

    def softcap(score, b, h, q, kv):
        return SOFTCAP * torch.tanh(score / SOFTCAP)

    score_mod = {"window": None, "alibi": alibi, "softcap": softcap}[case.structure]
    return torch.compile(flex_attention), create_block_mask(allowed, None, None, case.L, case.L, device=dev), score_mod


def _inputs(case, backward, dev):
    return [torch.randn(1, case.H, case.L, case.D, dtype=case.dtype, device=dev, requires_grad=backward)
            for _ in range(3)]


def not_applicable(impl, case, backward, dev):
    """Why an implementation cannot express a case, or None."""
    if impl == "torch+mask" and case.structure == "softcap":
        return "no mask gives PyTorch's SDPA a softcap"
    if impl == "flex" and backward and dev.type != "cuda":
        return f"PyTorch's flex_attention has no backward on {dev.type}"
    return None


def call(impl, case, backward, dev):
    slopes = _slopes(case.H)
    q, k, v = _inputs(case, backward, dev)
    if impl == "mfa_torch":
        kwargs = _mfa_kwargs(case, slopes)
        f = lambda: mfa_torch.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)  # noqa: E731
    elif impl == "torch+mask":
        mask = _sdpa_mask(case, slopes, dev)
        f = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    else:
        compiled, block_mask, score_mod = _flex(case, slopes, dev)
        f = lambda: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)  # noqa: E731
    if backward:
        grad = torch.randn_like(q)
        return implementations.Call(implementations.TorchFramework(dev),
                                    lambda: torch.autograd.grad(f(), (q, k, v), grad))
    return implementations.Call(implementations.TorchFramework(dev), f)


def route(case, backward, dev):
    """The route mfa_torch takes for the case, as `explain` names it."""
    q, k, v = _inputs(case, backward, dev)
    text = mfa_torch.explain(q, k, v, is_causal=True, **_mfa_kwargs(case, _slopes(case.H)))
    return text.removeprefix("route: ").split(" ", 1)[0]


def row(impl, case, backward, dev, settings):
    result = {"impl": impl, "device": str(dev), "route": route(case, backward, dev) if impl == "mfa_torch" else "-",
              "pass": "fwd+bwd" if backward else "fwd", "structure": case.structure, "dtype": case.dtype_name,
              "H": case.H, "L": case.L, "D": case.D}
    reason = not_applicable(impl, case, backward, dev)
    if reason:
        return {**result, "note": reason}
    timing, note = run.measured(lambda: call(impl, case, backward, dev), settings, dev)
    return {**result, **timing, "note": note}


def rows(structured_cases, dev, settings):
    jobs = [(impl, case, backward) for case in structured_cases for backward in (False, True)
            for impl in IMPLEMENTATIONS]
    return [row(impl, case, backward, dev, settings) for impl, case, backward in
            progress(jobs, "structured attention", lambda j: f"{j[0]} {'fwd+bwd' if j[2] else 'fwd'} {j[1].label()}")]


def ratios(result_rows):
    """Per case and pass: mfa_torch's time over the fastest PyTorch path's, and its peak memory over SDPA with the
    mask's (the targets of README "Routes")."""
    cases_ = {}
    for r in result_rows:
        cases_.setdefault((r["structure"], r["dtype"], r["L"], r["pass"]), {})[r["impl"]] = r
    table = []
    for (structure, dtype, L, pass_), by_impl in cases_.items():
        ours = by_impl.get("mfa_torch", {})
        theirs = [by_impl[i]["median_ms"] for i in ("torch+mask", "flex") if by_impl.get(i, {}).get("median_ms")]
        mask_mib = by_impl.get("torch+mask", {}).get("extra_mem_mib")
        time_ratio = ours["median_ms"] / min(theirs) if ours.get("median_ms") and theirs else None
        memory_ratio = ours["extra_mem_mib"] / mask_mib if ours.get("extra_mem_mib") is not None and mask_mib else None
        table.append({"structure": structure, "dtype": dtype, "L": L, "pass": pass_, "route": ours.get("route", ""),
                      "time_vs_fastest_pytorch": time_ratio, "memory_vs_sdpa_mask": memory_ratio})
    return table
