"""FLUX.1 adapters: dev (guidance-distilled, 512 tokens) and schnell (no guidance embedding, 256 tokens)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import PipelineAdapter, Trajectory, register_adapter


class _FluxAdapter(PipelineAdapter):
    denoiser_class = "FluxTransformer2DModel"
    encoder_slot = "text_encoder_2"
    tokenizer_slot = "tokenizer_2"
    # FluxPipeline calls T5 on inputs padded to max length and passes no attention mask.
    uses_attention_mask = False
    conditioning_width_key = "joint_attention_dim"
    guidance_embeds: bool

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return super().matches(pipe) and bool(pipe.transformer.config.guidance_embeds) == cls.guidance_embeds

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        # Each encoder runs where it is (the teacher may have been offloaded to the CPU); the cache moves rows.
        t5 = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length, device=self.teacher.device)
        pooled = self.pipe._get_clip_prompt_embeds(texts, device=self.pipe.text_encoder.device)
        return {"t5": t5, "pooled": pooled}

    def start_trajectory(self, batch_size, resolution, num_inference_steps, generator) -> Trajectory:
        # Imported here: loading the pipeline module costs seconds that `import encoder_shrink` should not pay.
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        device, dtype = self.device, self.denoiser.dtype
        latents, image_ids = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels // 4, resolution, resolution, dtype, device, generator
        )
        scheduler = self._scheduler()
        config = scheduler.config
        # Same sigmas and resolution-dependent shift as FluxPipeline.__call__.
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if config.get("use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            latents.shape[1],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)
        return Trajectory(latents=latents, timesteps=timesteps, scheduler=scheduler, extras={"image_ids": image_ids})

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        guidance = None
        if self.guidance == "embedded":
            guidance = torch.full([batch], float(guidance_scale), device=latents.device, dtype=torch.float32)
        text_ids = torch.zeros(t5.shape[1], 3, device=latents.device, dtype=latents.dtype)
        return self.denoiser(
            hidden_states=latents,
            timestep=t.expand(batch).to(latents.dtype) / 1000,
            guidance=guidance,
            pooled_projections=rows["pooled"],
            encoder_hidden_states=t5.to(self.denoiser.dtype),
            txt_ids=text_ids,
            img_ids=trajectory.extras["image_ids"],
            return_dict=False,
        )[0]


@register_adapter
class FluxDevAdapter(_FluxAdapter):
    name = "flux-dev"
    guidance_embeds = True
    guidance = "embedded"
    # FluxPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 512


@register_adapter
class FluxSchnellAdapter(_FluxAdapter):
    name = "flux-schnell"
    guidance_embeds = False
    guidance = None
    # FLUX.1-schnell was trained with 256 T5 tokens (its model card calls the pipeline with max_sequence_length=256).
    max_sequence_length = 256
