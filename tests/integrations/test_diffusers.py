"""mfa_torch.integrations.diffusers.enable on tiny diffusers models built from configs: outputs with mfa_torch
match diffusers' own attention on the same weights, and every attention call reaches mfa_torch."""
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
from diffusers.models.attention_dispatch import attention_backend
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import mfa_torch
from mfa_torch.integrations.diffusers import MfaAttnProcessor, enable

ORIGINAL_SDPA = F.scaled_dot_product_attention


def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
        in_channels=4, out_channels=4, layers_per_block=1, sample_size=16).eval()


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    encoder_mask = torch.ones(2, 7)
    encoder_mask[1, 5:] = 0  # the second prompt is shorter
    return dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor([10, 500]),
                encoder_hidden_states=torch.randn(2, 7, 8, generator=g), encoder_attention_mask=encoder_mask)


def flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()


def flux_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 4, generator=g),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                img_ids=torch.randn(16, 3, generator=g), txt_ids=torch.zeros(5, 3))


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def test_unet_gets_the_mfa_processor_and_matches(routes):
    model, inputs = unet(), unet_inputs()
    expected = run(model, inputs)
    enabled = enable(model)
    assert enabled.counts() == {"mfa processor": 8}  # 4 transformer blocks x (self, cross) attention
    assert all(type(p) is MfaAttnProcessor for p in model.attn_processors.values())
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA  # this path needs no patch
    got = run(model, inputs)
    assert len(routes) == 8
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert enable(model).counts() == {"mfa processor": 8}  # enabling again changes nothing
    enabled.disable()
    assert all(type(p) is AttnProcessor2_0 for p in model.attn_processors.values())


def test_vae_attention_with_group_norm_and_residual(routes):
    """The VAE's mid-block attention takes (B, C, H, W) maps, group-normalises them and adds a residual."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, in_channels=3,
                        out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",)).eval()
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = run(vae, dict(sample=image))
    with enable(vae) as enabled:
        assert enabled.counts() == {"mfa processor": 2}  # encoder and decoder mid-blocks
        got = run(vae, dict(sample=image))
    assert len(routes) == 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.emulator
def test_unet_forward_under_the_emulator(routes):
    """A real client driving the Metal kernels: the shipped .metal attention under the MSL emulator."""
    model, inputs = unet(), unet_inputs()
    expected = run(model, inputs)
    with enable(model), mfa_torch.backend("emulator"):
        got = run(model, inputs)
    assert [name for _, _, name in routes] == ["emulator"] * 8
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unet_matches_diffusers_math_processor(routes):
    """Against diffusers' materialised-softmax AttnProcessor as well, not just its SDPA processor."""
    model, inputs = unet(), unet_inputs()
    model.set_attn_processor(AttnProcessor())
    expected = run(model, inputs)
    model.set_attn_processor(AttnProcessor2_0())
    with enable(model):
        got = run(model, inputs)
    assert len(routes) == 8
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flux_goes_through_the_patched_dispatcher_and_matches(routes):
    model, inputs = flux(), flux_inputs()
    expected = run(model, inputs)
    with enable(model) as enabled:
        assert enabled.counts() == {"patch": 2}  # one double-stream and one single-stream block
        assert F.scaled_dot_product_attention is not ORIGINAL_SDPA
        got = run(model, inputs)
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA
    assert len(routes) == 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_flux_gradients_match(routes):
    model, inputs = flux(), flux_inputs()
    grads = {}
    for label in ("torch", "mfa"):
        model.zero_grad()
        if label == "mfa":
            with enable(model):
                model(**inputs).sample.square().mean().backward()
        else:
            model(**inputs).sample.square().mean().backward()
        grads[label] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(routes) == 2
    for got, want in zip(grads["mfa"], grads["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_non_native_backend_is_left_alone():
    model = flux()
    with attention_backend("_native_math"):
        with enable(model) as enabled:
            assert enabled.counts() == {"backend _native_math": 2}
            assert F.scaled_dot_product_attention is ORIGINAL_SDPA  # nothing to patch for


def test_pipeline_components_and_other_processors(routes):
    """A pipeline-like object: its module components are enabled; processors other than AttnProcessor2_0 are
    left alone and reached by the patch."""
    class Pipeline:
        def __init__(self):
            self.components = {"unet": unet(), "transformer": flux(), "scheduler": object()}

    pipe = Pipeline()
    pipe.components["unet"].set_attn_processor(AttnProcessor())
    enabled = enable(pipe)
    try:
        assert enabled.counts() == {"other processor": 8, "patch": 2}
        assert all(name.startswith(("unet.", "transformer.")) for name in enabled.paths)
        assert F.scaled_dot_product_attention is not ORIGINAL_SDPA
    finally:
        enabled.disable()
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA


def test_enable_rejects_other_objects():
    with pytest.raises(TypeError, match="diffusers model or pipeline"):
        enable(object())
