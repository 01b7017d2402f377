"""diffusers models with their attention through mfa_torch (mfa_torch.integrations.diffusers.enable).

    python examples/diffusers_generate.py        # tiny UNet and Flux transformer built from configs, no download
    python examples/diffusers_generate.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a red fox"

The default runs a few DDIM denoising steps with a tiny UNet2DConditionModel (the "mfa processor" path)
and one step of a tiny FluxTransformer2DModel (the "patch" path: diffusers' attention dispatcher), each
compared with diffusers' own attention. With --model a pipeline comes from the Hugging Face hub (on a Mac
it runs on the "mps" device) and the image is saved to --out.
"""
import argparse
import time

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, FluxTransformer2DModel, UNet2DConditionModel

from mfa_torch.integrations.diffusers import enable


def denoise(unet, scheduler, latents, text, steps):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            noise = unet(latents, t, encoder_hidden_states=text).sample
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def tiny_unet():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
        in_channels=4, out_channels=4, layers_per_block=1, sample_size=16).eval()
    latents = torch.randn(1, 4, 16, 16)
    text = torch.randn(1, 7, 8)  # stands in for a text encoder's output
    expected = denoise(unet, DDIMScheduler(), latents, text, steps=10)
    with enable(unet) as enabled:
        print(f"UNet, {enabled}: 10 DDIM steps")
        got = denoise(unet, DDIMScheduler(), latents, text, steps=10)
    print(f"  max |mfa_torch - diffusers| = {(got - expected).abs().max():.2e}")


def tiny_flux():
    torch.manual_seed(0)
    flux = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    inputs = dict(hidden_states=torch.randn(1, 64, 4), encoder_hidden_states=torch.randn(1, 8, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
                  img_ids=torch.randn(64, 3), txt_ids=torch.zeros(8, 3))
    with torch.no_grad():
        expected = flux(**inputs).sample
        with enable(flux) as enabled:
            print(f"Flux, {enabled}")
            got = flux(**inputs).sample
    print(f"  max |mfa_torch - diffusers| = {(got - expected).abs().max():.2e}")


def hub_pipeline(name, prompt, steps, out):
    device = "mps" if torch.backends.mps.is_available() else "cpu"
    dtype = torch.float16 if device == "mps" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype).to(device)
    print(name, enable(pipe))
    start = time.perf_counter()
    image = pipe(prompt, num_inference_steps=steps).images[0]
    image.save(out)
    print(f"{steps} steps in {time.perf_counter() - start:.1f} s; saved {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a hub pipeline name (default: tiny models built from configs)")
    parser.add_argument("--prompt", default="a photograph of a red fox in the snow")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", default="mfa_torch_diffusers.png")
    args = parser.parse_args()
    if args.model:
        hub_pipeline(args.model, args.prompt, args.steps, args.out)
    else:
        tiny_unet()
        tiny_flux()


if __name__ == "__main__":
    main()
