"""sdpa_check: one call of mfa_torch.scaled_dot_product_attention checked against the fp64 oracle with the
tolerance rule, for the output, the lse (if returned) and every gradient."""
import torch

import mfa_torch
from oracle import attention_fp64, check_against_oracle, make_inputs, torch_attention_same_dtype


def sdpa_check(shapes, dtype, *, mask=None, mask_grad=False, is_causal=False, scale=None, enable_gqa=None,
               window_size=None, alibi_slopes=None, softcap=0.0, return_lse=False, grads=True, seed=0, device="cpu"):
    """shapes: dict with q, k, v shapes. mask: tensor (bool/float) or None (float mask cast to dtype).
    device: where mfa_torch runs (inputs are moved there and results back; the oracles run on the CPU)."""
    inputs = make_inputs(shapes, dtype, seed=seed)
    if mask is not None:
        m = mask if mask.dtype == torch.bool else mask.to(dtype)
        if mask_grad:
            m = m.detach().clone().requires_grad_()
        inputs["mask"] = m
    Hq, Hk = shapes["q"][-3], shapes["k"][-3]
    if enable_gqa is None:
        enable_gqa = Hq != Hk
    kw = {}
    if is_causal:
        kw["is_causal"] = True
    if scale is not None:
        kw["scale"] = scale
    if enable_gqa:
        kw["enable_gqa"] = True
    if window_size is not None:
        kw["window_size"] = window_size
    if alibi_slopes is not None:
        kw["alibi_slopes"] = alibi_slopes
    if softcap:
        kw["softcap"] = softcap
    if return_lse:
        kw["return_lse"] = True
    okw = dict(causal="upper_left" if is_causal else None,
               window=tuple(window_size) if window_size is not None else None,
               alibi_slopes=alibi_slopes, softcap=softcap, scale=scale, align="upper_left")

    def ours(t):
        on = {name: x.to(device) for name, x in t.items()}
        if alibi_slopes is not None:
            kw["alibi_slopes"] = alibi_slopes.to(device)
        result = mfa_torch.scaled_dot_product_attention(on["q"], on["k"], on["v"], attn_mask=on.get("mask"), **kw)
        return tuple(r.cpu() for r in result) if return_lse else result.cpu()

    def oracle(t):
        return attention_fp64(t["q"], t["k"], t["v"], mask=t.get("mask"), **okw)

    def torch_same(t):
        return torch_attention_same_dtype(t["q"], t["k"], t["v"], mask=t.get("mask"), **okw)

    return check_against_oracle(ours, oracle, torch_same if dtype != torch.float64 else None, inputs, dtype,
                                grads=grads, check_lse=return_lse)
