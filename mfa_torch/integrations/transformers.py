"""attn_implementation="mfa" (and "paged|mfa", for continuous batching) for transformers models.

    from mfa_torch.integrations.transformers import register
    register()  # once, before loading
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="mfa")
    # or from_config(config, attn_implementation="mfa"), or model.set_attn_implementation("mfa")
    outputs = model.generate_batch(prompts, generation_config)  # continuous batching runs "paged|mfa"

The attention function takes transformers' calling convention (q/k/v as (B, H, S, D), K/V with the model's
key/value heads) and computes attention with mfa_torch.scaled_dot_product_attention. Masks come from
transformers' own sdpa mask function, registered under the same name: with no mask function for a name,
transformers would pass attention_mask=None and drop the causal and padding structure.

"paged|<name>" is transformers' naming for a paged implementation: generate_batch runs a model set to "mfa" as
"paged|mfa" (and sets it back after), unless FlashAttention is installed, which it then prefers; a model set to
"paged|mfa" (from_pretrained or set_attn_implementation) always runs it. The paged function writes the batch's new
K/V into transformers' PagedAttentionCache; full-attention layers then attend straight from the cache's pages
(mfa_torch.flash_attn_varlen_func with a block table), sliding-window layers (a ring buffer, whose pages are not in
position order) attend the packed keys the cache's update() gathers.
"""
import torch
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


# Compile is disabled, as for transformers' own paged functions: cache.update mutates views of the cache tensor in
# place, which compile's functionalization would turn into a copy of the whole cache for every layer.
@torch.compiler.disable
def paged_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, cache=None,
                            cu_seq_lens_q=None, cu_seq_lens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                            block_table=None, sliding_window=None, softcap=None, is_causal=None, **kwargs):
    """transformers' paged attention protocol (continuous batching); returns (output (1, total_q, H, D), None).

    query/key/value are the batch's new tokens, all sequences packed: (1, H or Hk, total_q, D). cache.update writes
    the new K/V at write_index and returns each sequence's keys and values (cached, then new), packed as
    (total_k, Hk, D) and delimited by cu_seq_lens_k. A sliding-window layer's cache keeps only the last window - 1
    past keys; its cu_seq_lens_k (the "sliding_attention" entry of the dicts, for models with both kinds of layer)
    count those, and bottom-right causal alignment puts each query after its sequence's cached keys, which is what
    window_size=(window - 1, 0) needs.
    """
    name = "paged|mfa"
    # Extras that change the result and that this function cannot honour: refused, never silently dropped.
    if kwargs.get("output_attentions"):
        raise NotImplementedError(f'attn_implementation="{name}" does not return attention weights '
                                  '(output_attentions=True); use attn_implementation="paged|eager"')
    if cache is None:
        raise ValueError(f'attn_implementation="{name}" was called without a paged attention cache: it serves '
                         'continuous batching (model.generate_batch), which passes the cache and the packed '
                         'sequences\' lengths. Use attn_implementation="mfa" for a standard forward.')
    if attention_mask is not None:
        raise NotImplementedError(f'attn_implementation="{name}" takes the causal and sliding-window structure from '
                                  'cu_seq_lens_q/k and cannot apply an attention_mask; use "paged|sdpa" for one')
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError(f'attn_implementation="{name}" cannot add a position_bias; use "paged|eager"')
    if is_causal is False or getattr(module, "is_causal", True) is False:
        raise NotImplementedError(f'attn_implementation="{name}" is causal (the cache serves decoder-only '
                                  'generation); this module asks for bidirectional attention')
    if block_table is not None:  # transformers' decode fast path: it skips update()'s indices, for flash kernels only
        raise NotImplementedError(f'attn_implementation="{name}" reads the cache through read_index, not a '
                                  'block_table; use ContinuousBatchingConfig(max_blocks_per_request=0)')
    if "read_index" not in kwargs or "write_index" not in kwargs:
        raise ValueError(f'attn_implementation="{name}" needs read_index and write_index from continuous batching')

    window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
    allocator = cache.layer_to_allocator[module.layer_idx]  # the cache of this layer's kind (full or sliding)
    cache_window = getattr(allocator, "sliding_window", None)
    if cache_window is not None and window != cache_window:
        # a sliding cache keeps only its window - 1 past keys: attention with another window would read the wrong keys
        raise ValueError(f"layer {module.layer_idx} has a sliding-window cache of {cache_window} tokens but attends "
                         f"with sliding_window={window}")
    if isinstance(cu_seq_lens_k, dict):  # models with both kinds of layer: the key lengths of this layer's cache
        layer_type = next(kind for kind, a in cache.cache_allocators.items() if a is allocator)
        cu_seq_lens_k, max_seqlen_k = cu_seq_lens_k[layer_type], max_seqlen_k[layer_type]

    read_index, write_index = kwargs["read_index"], kwargs["write_index"]
    cu_seq_lens_k = cu_seq_lens_k.to(torch.int32)
    reads = read_index[allocator.index]
    from_pages = cache_window is None and reads.numel() > 0  # keys in a full-attention cache: read from its pages
    if from_pages:
        read_index = [r.new_empty(0) for r in read_index]  # update() then writes only
    key, value = cache.update(key_states=key, value_states=value, layer_idx=module.layer_idx, read_index=read_index,
                              write_index=write_index)
    pages = None
    if from_pages:
        _, key, value = cache.get_cache_for_block_table(module.layer_idx)  # (num_pages, page_size, Hk, D) each
        pages = _block_table(reads, cu_seq_lens_k, int(max_seqlen_k), key.shape[1])
    out = _attention.flash_attn_varlen_func(
        query.transpose(1, 2).squeeze(0), key, value, cu_seq_lens_q.to(torch.int32), cu_seq_lens_k,
        int(max_seqlen_q), int(max_seqlen_k), dropout_p=dropout, softmax_scale=scaling, causal=True,
        window_size=(window - 1, 0) if window else (-1, -1), softcap=softcap or 0.0, s_aux=kwargs.get("s_aux"),
        block_table=pages)
    return out.unsqueeze(0), None


def _block_table(reads, cu_seq_lens_k, max_seqlen_k, page_size):
    """Each sequence's pages, (sequences, max pages) int32, from continuous batching's read_index: a full-attention
    cache holds sequence positions in order, page by page, and read_index lists each sequence's rows of the layer's
    token view (cu_seq_lens_k apart), so the row of its first token on page j, divided by the page size, is that
    page. Entries past a sequence's keys are never read (0)."""
    starts, lengths = cu_seq_lens_k[:-1].long(), (cu_seq_lens_k[1:] - cu_seq_lens_k[:-1]).long()
    offsets = torch.arange(-(-max_seqlen_k // page_size), device=reads.device) * page_size
    used = offsets.view(1, -1) < lengths.view(-1, 1)
    rows = (starts.view(-1, 1) + offsets.view(1, -1)).clamp(max=max(reads.numel() - 1, 0))
    return torch.where(used, reads[rows] // page_size, 0).to(torch.int32)


def register(name="mfa"):
    """Register mfa_torch's attention function and transformers' sdpa mask function under `name`, and the paged
    attention function under "paged|" + name, so that attn_implementation=name works in from_pretrained,
    from_config and set_attn_implementation, and generate_batch (continuous batching) works. Idempotent.

    The paged name gets no mask function, on purpose: transformers builds no mask for it (continuous batching
    prepares masks only for "paged|sdpa" and "paged|eager"), and a mask function would make the model build a
    causal mask over the packed batch as if it were one sequence."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    AttentionInterface.register(f"paged|{name}", paged_attention_forward)
    return name
