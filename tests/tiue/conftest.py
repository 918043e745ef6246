"""TiUE fixtures: a tiny SD pipeline whose UNet is trained on a known latent distribution (a teacher to match)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline

from encoder_shrink import tiny

# The teacher's data: latents with these per-channel means and a 0.5 spread, whatever the prompt. A random UNet's
# DDIM samples explode (std ~12), so no student can be "closer" to them; a trained one's are a distribution.
CHANNEL_MEANS = (1.0, -1.0, 0.5, -0.5)
# 300 Adam steps of 16 latents: about 20 s on 2 CPU cores; the 25-step DDIM samples then have std ~1 (0.5 + means).
TRAIN_STEPS, BATCH = 300, 16


@pytest.fixture(scope="session")
def trained_sd_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trained-sd") / "sd"
    pipe = StableDiffusionPipeline.from_pretrained(tiny.save_tiny_pipeline(tiny.STABLE_DIFFUSION, directory))
    unet, scheduler = pipe.unet.train(), DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    tokens = pipe.tokenizer(["a red circle", "a blue square", "two green triangles", "a yellow star", ""],
                            padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        embeds = pipe.text_encoder(tokens.input_ids)[0]
    means = torch.tensor(CHANNEL_MEANS)[None, :, None, None]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    for _ in range(TRAIN_STEPS):
        latents = means + 0.5 * torch.randn(BATCH, 4, 8, 8, generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (BATCH,), generator=generator)
        rows = torch.randint(0, len(embeds), (BATCH,), generator=generator)  # the empty prompt is one of them
        loss = F.mse_loss(unet(scheduler.add_noise(latents, noise, t), t, embeds[rows]).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval().requires_grad_(False)
    pipe.save_pretrained(directory)
    return directory
