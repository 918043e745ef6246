"""TiUEPipeline: one encoder pass and one batched decoder pass, a DiffusionPipeline that saves with its schedule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from encoder_shrink import tiny
from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.tiue import DDIMCombine, TiUEPipeline, UNetSplit


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny.save_tiny_pipeline(tiny.STABLE_DIFFUSION, tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture
def pipe(sd_dir):
    sd = StableDiffusionPipeline.from_pretrained(sd_dir)
    tiue = TiUEPipeline.from_sd_pipeline(sd)
    tiue.set_progress_bar_config(disable=True)
    return tiue


def test_samples_with_one_encoder_and_one_decoder_pass(pipe):
    assert pipe.timesteps == (751, 501, 251, 1)
    calls = {"forward": 0, "up": 0}
    hooks = [pipe.unet.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1)),
             pipe.unet.up_blocks[0].register_forward_hook(lambda *a: calls.__setitem__("up", calls["up"] + 1))]
    try:
        latents = pipe(["a red circle", "a blue square"], output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"forward": 0, "up": 1}  # never the whole UNet; the decoder once, for all K steps
    # what it computes: the combine of the split's K predictions from the same noise
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds = pipe.encode_prompt(["a red circle", "a blue square"], torch.device("cpu"))
    split = UNetSplit(pipe.unet)
    with torch.no_grad():
        outputs = split.decode(split.encode(noise, 751, embeds), torch.tensor(pipe.timesteps), embeds)
    torch.testing.assert_close(latents, pipe.combine(noise, outputs))


def test_call_options(pipe):
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    images = pipe("a red circle", generator=generator(), output_type="np").images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    pil = pipe("a red circle", generator=generator()).images[0]
    assert pil.size == (16, 16)
    embeds = pipe.encode_prompt("a red circle", torch.device("cpu"))
    np.testing.assert_allclose(pipe(prompt_embeds=embeds, generator=generator(), output_type="np").images, images,
                               atol=1e-6)
    several = pipe("a red circle", num_images_per_prompt=3, generator=generator(), output_type="np").images
    assert several.shape[0] == 3 and not np.allclose(several[0], several[1])
    latents = torch.randn(1, 4, 8, 8)
    np.testing.assert_array_equal(pipe("a cat", latents=latents, output_type="np").images,
                                  pipe("a cat", latents=latents.clone(), output_type="np").images)
    with pytest.raises(InvalidArgumentError, match="exactly one of prompt and prompt_embeds"):
        pipe()
    with pytest.raises(InvalidArgumentError, match=r"latents have shape \(1, 4, 4, 4\), expected \(1, 4, 8, 8\)"):
        pipe("a cat", latents=torch.randn(1, 4, 4, 4))


def test_save_and_from_pretrained_round_trip_to_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "tiue")
    index = json.loads((tmp_path / "tiue" / "model_index.json").read_text())
    assert index["_class_name"] == "TiUEPipeline" and index["timesteps"] == [751, 501, 251, 1]
    reloaded = TiUEPipeline.from_pretrained(tmp_path / "tiue")
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.timesteps == pipe.timesteps
    expected = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    got = reloaded("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(got, expected)


def test_a_schedule_the_scheduler_does_not_make_is_refused(sd_dir):
    sd = StableDiffusionPipeline.from_pretrained(sd_dir)
    with pytest.raises(InvalidArgumentError, match=r"timesteps \[900, 500\] are not the scheduler's 2-step"):
        TiUEPipeline.from_sd_pipeline(sd, timesteps=[900, 500])
    two = TiUEPipeline.from_sd_pipeline(sd, timesteps=[501, 1])
    assert two.timesteps == (501, 1) and isinstance(two.combine, DDIMCombine)


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="enable_model_cpu_offload needs a CUDA accelerator")
def test_model_cpu_offload(sd_dir):
    sd = StableDiffusionPipeline.from_pretrained(sd_dir)
    on_gpu = TiUEPipeline.from_sd_pipeline(sd).to("cuda")
    expected = on_gpu("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    offloaded = TiUEPipeline.from_sd_pipeline(StableDiffusionPipeline.from_pretrained(sd_dir))
    offloaded.enable_model_cpu_offload()
    images = offloaded("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert offloaded.unet.device.type == "cpu"  # moved back after use by the offload hooks
    np.testing.assert_allclose(images, expected, atol=1e-3)


def test_guidance_is_encoder_propagation_of_the_sequential_ddim_loop(sd_dir):
    """With CFG the pipeline is training-free encoder propagation: the encoder once on x_T, then DDIM step by step
    with each step's guided decoder output; the decoder reads the encoder's features, not x_t, so one batch holds all
    steps. Checked against `DDIMScheduler.step` run in a loop, at 25 steps, with the guidance of SD pipelines."""
    from encoder_shrink.tiue.distiller import sd_ddim_scheduler

    sd = StableDiffusionPipeline.from_pretrained(sd_dir)
    scheduler = sd_ddim_scheduler(sd.scheduler)
    scheduler.set_timesteps(25)
    pipe = TiUEPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                        scheduler=sd_ddim_scheduler(sd.scheduler), timesteps=scheduler.timesteps.tolist())
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square"]
    guided = pipe(prompts, latents=noise, guidance_scale=4.0, output_type="latent").images

    device = torch.device("cpu")
    cond, uncond = pipe.encode_prompt(prompts, device), pipe.encode_prompt(["", ""], device)
    split, x = UNetSplit(sd.unet), noise.clone()
    with torch.no_grad():
        features = split.encode(torch.cat([noise, noise]), scheduler.timesteps[0], torch.cat([uncond, cond]))
        for t in scheduler.timesteps:
            u, c = split.decode(features, t.reshape(1), torch.cat([uncond, cond])).chunk(2)
            x = scheduler.step(u + 4.0 * (c - u), t, x).prev_sample
    torch.testing.assert_close(guided, x, rtol=1e-4, atol=1e-4)
    unguided = pipe(prompts, latents=noise, output_type="latent").images
    assert not torch.allclose(guided, unguided, atol=1e-3)  # the guidance does change the sample
    torch.testing.assert_close(pipe(prompts, latents=noise, guidance_scale=1.0, output_type="latent").images, unguided)


def test_one_guided_step_is_the_sd_pipelines_step_on_the_same_noise(sd_dir):
    """At K = 1 the split is the whole UNet: with the same generators and guidance, TiUEPipeline draws what
    StableDiffusionPipeline draws in one DDIM step (same noise, same CFG, same step): what the TiUE demo relies on to
    compare variants seed for seed."""
    from encoder_shrink.tiue.distiller import sd_ddim_scheduler

    sd = StableDiffusionPipeline.from_pretrained(sd_dir)
    sd.scheduler = sd_ddim_scheduler(sd.scheduler)
    sd.set_progress_bar_config(disable=True)
    tiue = TiUEPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                        scheduler=sd_ddim_scheduler(sd.scheduler), timesteps=[1])
    tiue.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square"]

    def generators():
        return [torch.Generator().manual_seed(s) for s in (5, 6)]

    expected = sd(prompts, num_inference_steps=1, guidance_scale=3.0, generator=generators(), height=16, width=16,
                  output_type="latent").images
    torch.testing.assert_close(tiue(prompts, guidance_scale=3.0, generator=generators(), height=16, width=16,
                                    output_type="latent").images, expected, rtol=1e-5, atol=1e-5)
