"""attn_implementation="mfa" for transformers models.

    from mfa_torch.integrations.transformers import register
    register()  # once, before loading
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="mfa")
    # or from_config(config, attn_implementation="mfa"), or model.set_attn_implementation("mfa")

The attention function takes transformers' calling convention (q/k/v as (B, H, S, D), K/V with the model's
key/value heads) and computes attention with mfa_torch.scaled_dot_product_attention. Masks come from
transformers' own sdpa mask function, registered under the same name: with no mask function for a name,
transformers would pass attention_mask=None and drop the causal and padding structure.
"""
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import create_position_bias_mask
from transformers.masking_utils import sdpa_mask

from .. import attention as _attention


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      sliding_window=None, softcap=None, position_bias=None, **kwargs):
    """transformers' attention-function protocol; returns (output (B, S, H, D) contiguous, None).

    s_aux (GPT-OSS's attention sinks, one logit per head) becomes sinks. sliding_window needs no work here: sdpa_mask builds the window into attention_mask for every call where
    it excludes a key, and skips the mask only when all keys lie inside the window. Passing it on as
    window_size would be wrong during decoding, where query 0 of the call is not key position 0.
    """
    # Extras that change the result and that mfa_torch cannot honour: refused, never silently dropped.
    if kwargs.get("output_attentions"):
        raise NotImplementedError('attn_implementation="mfa" does not return attention weights '
                                  '(output_attentions=True); use attn_implementation="eager"')
    # Causality as transformers' sdpa_attention_forward resolves it: only for several queries and no mask.
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = query.shape[2] > 1 and attention_mask is None and causal
    if position_bias is not None:  # T5-style learned bias: added to the mask, as transformers' sdpa path does
        attention_mask = create_position_bias_mask(position_bias, attention_mask, causal, query, key)
        causal = False
    out = _attention.scaled_dot_product_attention(
        query, key, value, attention_mask, dropout, causal, scaling, enable_gqa=query.shape[1] != key.shape[1],
        softcap=softcap or 0.0, sinks=kwargs.get("s_aux"))  # s_aux: GPT-OSS's attention sinks (H,)
    return out.transpose(1, 2).contiguous(), None


def register(name="mfa"):
    """Register mfa_torch's attention function and transformers' sdpa mask function under `name`, so that
    attn_implementation=name works in from_pretrained, from_config and set_attn_implementation. Idempotent."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
