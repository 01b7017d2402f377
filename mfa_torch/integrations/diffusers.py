"""mfa_torch for diffusers models and pipelines.

    from mfa_torch.integrations.diffusers import enable
    enabled = enable(pipe)      # a pipeline or a single model
    print(enabled)              # which attention modules took which path
    enabled.disable()           # or: with enable(pipe): ...

Two paths, after how the model computes attention:
  "mfa processor": modules running diffusers' AttnProcessor2_0 (UNet2DConditionModel, Transformer2DModel,
      ...) get MfaAttnProcessor, which calls mfa_torch.scaled_dot_product_attention itself;
  "patch": modules whose processor goes through diffusers' attention dispatcher with its native backend
      (Flux, Wan, LTX, QwenImage, HunyuanVideo, ...), which calls
      torch.nn.functional.scaled_dot_product_attention at call time: mfa_torch.patch() reroutes that.
      The dispatcher takes no new backend names, so this is the one way in.
Other processors are left alone ("other processor"): the patch reaches those that call
torch.nn.functional.scaled_dot_product_attention (diffusers' other *2_0 processors), so it is applied for
them too. Dispatcher modules set to a non-native backend ("backend NAME") are left as they are.
"""
import collections

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.attention_processor import AttnProcessor2_0

from .. import attention as _attention
from ..patch import patch as _patch


class MfaAttnProcessor:
    """A drop-in for diffusers' AttnProcessor2_0 whose attention is mfa_torch.scaled_dot_product_attention.

    Unlike AttnProcessor2_0 it honours the module's `scale` (AttnProcessor2_0 always uses 1/sqrt(head_dim),
    which equals `scale` unless the module was built with scale_qk=False or a custom scale).
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:  # (B, C, H, W) feature maps: one token per pixel
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            batch, keys = context.shape[:2]
            attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states  # self-attention reads the normalised states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)

        def heads(t):  # (B, S, H * D) -> (B, H, S, D)
            return t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(context)), heads(attn.to_v(context))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = _attention.scaled_dot_product_attention(query, key, value, attention_mask, scale=attn.scale)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _models(model_or_pipeline):
    """(name, model) pairs: the model itself, or a pipeline's components that are torch modules."""
    if isinstance(model_or_pipeline, torch.nn.Module):
        return [("", model_or_pipeline)]
    components = getattr(model_or_pipeline, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"enable() takes a diffusers model or pipeline, got {type(model_or_pipeline).__name__}")
    return [(name, c) for name, c in components.items() if isinstance(c, torch.nn.Module)]


def _path(processor):
    if type(processor) in (AttnProcessor2_0, MfaAttnProcessor):  # exactly: subclasses may compute otherwise
        return "mfa processor"
    if hasattr(processor, "_attention_backend"):  # a dispatcher processor; None means the active backend
        backend = processor._attention_backend or _AttentionBackendRegistry.get_active_backend()[0]
        backend = AttentionBackendName(backend)
        return "patch" if backend == AttentionBackendName.NATIVE else f"backend {backend.value}"
    return "other processor"


class Enabled:
    """What enable() did: `paths` maps each attention module's qualified name to the path it took."""

    def __init__(self, paths, replaced, patch_state):
        self.paths, self._replaced, self._patch_state = paths, replaced, patch_state

    def counts(self):
        return dict(collections.Counter(self.paths.values()))

    def disable(self):
        """Give the modules their previous processors back and restore the patch state enable() found."""
        for module, processor in self._replaced:
            module.set_processor(processor)
        self._replaced = []
        if self._patch_state is not None:
            self._patch_state.__exit__(None, None, None)
            self._patch_state = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disable()

    def __repr__(self):
        counts = ", ".join(f"{n} {path}" for path, n in sorted(self.counts().items()))
        return f"<mfa_torch diffusers: {counts or 'no attention modules'}>"


def enable(model_or_pipeline):
    """Route a diffusers model's (or every model of a pipeline's) attention through mfa_torch; returns an
    Enabled whose disable() (or use as a context manager) undoes it."""
    paths, replaced = {}, []
    for prefix, model in _models(model_or_pipeline):
        for name, module in model.named_modules():
            if not (hasattr(module, "processor") and hasattr(module, "set_processor")):
                continue
            path = _path(module.processor)
            paths[".".join(filter(None, (prefix, name)))] = path
            if type(module.processor) is AttnProcessor2_0:
                replaced.append((module, module.processor))
                module.set_processor(MfaAttnProcessor())
    needs_patch = any(path in ("patch", "other processor") for path in paths.values())
    return Enabled(paths, replaced, _patch() if needs_patch else None)
