"""PixArt-alpha and PixArt-sigma adapters: T5 in `text_encoder`, called with an attention mask."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils import is_bs4_available, is_ftfy_available

from encoder_shrink.pipelines.base import PipelineAdapter, Trajectory, register_adapter


class _PixArtAdapter(PipelineAdapter):
    denoiser_class = "PixArtTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    uses_attention_mask = True
    conditioning_width_key = "caption_channels"
    guidance = "cfg"
    sigma: bool

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        # The pipelines call with clean_caption=True and fall back to lower-casing when bs4/ftfy are missing.
        self.clean_caption = is_bs4_available() and is_ftfy_available()

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        # Alpha and sigma share the denoiser class; the pipeline class tells them apart (PixArtSigmaPAGPipeline too).
        return super().matches(pipe) and ("Sigma" in type(pipe).__name__) == cls.sigma

    def tokenize(self, texts, max_sequence_length):
        texts = self.pipe._text_preprocessing(list(texts), clean_caption=self.clean_caption)
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=max_sequence_length, truncation=True,
            add_special_tokens=True, return_tensors="pt",
        )
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        input_ids, mask = self.tokenize(texts, max_sequence_length)
        device = self.teacher.device  # the teacher may have been offloaded to the CPU; the cache moves rows
        t5 = self.teacher(input_ids.to(device), attention_mask=mask.to(device))[0]
        return {"t5": t5.to(self.teacher.dtype)}

    def start_trajectory(self, batch_size, resolution, num_inference_steps, generator) -> Trajectory:
        # Imported here: loading the pipeline module costs seconds that `import encoder_shrink` should not pay.
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import retrieve_timesteps

        device, dtype = self.device, self.denoiser.dtype
        latents = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels, resolution, resolution, dtype, device, generator
        )
        scheduler = self._scheduler()
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, device)
        # eta=0.0 is the pipelines' default (DDIM); the helper keeps only what this scheduler's step accepts.
        step_kwargs = self.pipe.prepare_extra_step_kwargs(generator, 0.0)
        added = {"resolution": None, "aspect_ratio": None}
        if not self.sigma and self.denoiser.config.sample_size == 128:
            # PixArt-alpha 1024px micro-conditions, as PixArtAlphaPipeline builds them (CFG doubles the batch).
            size = torch.tensor([[resolution, resolution]] * 2 * batch_size, dtype=dtype, device=device)
            added = {"resolution": size, "aspect_ratio": torch.ones(2 * batch_size, 1, dtype=dtype, device=device)}
        return Trajectory(latents=latents, timesteps=timesteps, scheduler=scheduler,
                          extras={"step_kwargs": step_kwargs, "added_cond_kwargs": added})

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        model_input = trajectory.scheduler.scale_model_input(torch.cat([trajectory.latents] * 2), t)
        timestep = t[None] if t.ndim == 0 else t
        prediction = self.denoiser(
            model_input,
            encoder_hidden_states=t5.to(self.denoiser.dtype),
            encoder_attention_mask=attention_mask,
            timestep=timestep.to(model_input.device).expand(model_input.shape[0]),
            added_cond_kwargs=trajectory.extras["added_cond_kwargs"],
            return_dict=False,
        )[0]
        uncond, text = prediction.chunk(2)
        prediction = uncond + guidance_scale * (text - uncond)
        if self.denoiser.config.out_channels // 2 == trajectory.latents.shape[1]:
            prediction = prediction.chunk(2, dim=1)[0]  # learned sigma: the pipeline steps with the mean only
        return prediction


@register_adapter
class PixArtAlphaAdapter(_PixArtAdapter):
    name = "pixart-alpha"
    sigma = False
    # PixArtAlphaPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 120


@register_adapter
class PixArtSigmaAdapter(_PixArtAdapter):
    name = "pixart-sigma"
    sigma = True
    # PixArtSigmaPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 300
