"""Stable Diffusion 3 / 3.5 adapter: T5 in `text_encoder_3`, concatenated with CLIP-L/G along the sequence."""

from __future__ import annotations

import torch

from encoder_shrink.pipelines.base import PipelineAdapter, Trajectory, register_adapter


@register_adapter
class SD3Adapter(PipelineAdapter):
    name = "sd3"
    denoiser_class = "SD3Transformer2DModel"
    encoder_slot = "text_encoder_3"
    tokenizer_slot = "tokenizer_3"
    # StableDiffusion3Pipeline.__call__'s default max_sequence_length; no attention mask reaches T5.
    max_sequence_length = 256
    uses_attention_mask = False
    conditioning_width_key = "joint_attention_dim"
    guidance = "cfg"

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        # Each encoder runs where it is (the teacher may have been offloaded to the CPU); the cache moves rows.
        t5 = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length, device=self.teacher.device)
        clip_device = self.pipe.text_encoder.device
        clip_l, pooled_l = self.pipe._get_clip_prompt_embeds(texts, device=clip_device, clip_model_index=0)
        clip_g, pooled_g = self.pipe._get_clip_prompt_embeds(texts, device=clip_device, clip_model_index=1)
        # As StableDiffusion3Pipeline.encode_prompt: CLIP-L and CLIP-G side by side, zero-padded to the T5 width;
        # they precede the T5 tokens along the sequence.
        clip = torch.cat([clip_l, clip_g], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"t5": t5, "clip": clip, "pooled": torch.cat([pooled_l, pooled_g], dim=-1)}

    def start_trajectory(self, batch_size, resolution, num_inference_steps, generator) -> Trajectory:
        # Imported here: loading the pipeline module costs seconds that `import encoder_shrink` should not pay.
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

        device, dtype = self.device, self.denoiser.dtype
        latents = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels, resolution, resolution, dtype, device, generator
        )
        scheduler = self._scheduler()
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = self.denoiser.config.patch_size
            kwargs["mu"] = calculate_shift(
                (latents.shape[2] // patch) * (latents.shape[3] // patch),
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, device, **kwargs)
        return Trajectory(latents=latents, timesteps=timesteps, scheduler=scheduler)

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        model_input = torch.cat([trajectory.latents] * 2)
        prediction = self.denoiser(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=torch.cat([rows["clip"], t5.to(rows["clip"].dtype)], dim=-2),
            pooled_projections=rows["pooled"],
            return_dict=False,
        )[0]
        uncond, text = prediction.chunk(2)
        return uncond + guidance_scale * (text - uncond)
