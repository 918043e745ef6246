"""PixArt-alpha and PixArt-sigma families: T5 in `text_encoder`, called with an attention mask."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS

_ALPHA = "diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha.PixArtAlphaPipeline"
# The SD VAE (4 latent channels) both PixArt checkpoints ship.
SD_VAE_PARAMETERS = 83_653_863


def preprocess_captions(pipe: Any, texts: list[str]) -> list[str]:
    """
    The captions as the PixArt-derived pipelines (PixArt, Allegro, Latte) tokenize them: their `__call__` defaults to
    clean_caption=True, which falls back to lower-casing and stripping when bs4 or ftfy is missing.
    """
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return pipe._text_preprocessing(list(texts), clean_caption=is_bs4_available() and is_ftfy_available())


class _PixArtAdapter(PipelineAdapter):
    denoiser_class = "PixArtTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    uses_attention_mask = True
    denoiser_positions = "tokens"  # the mask goes into the transformer's cross-attention too
    conditioning_width_key = "caption_channels"
    guidance = "cfg"
    sigma: bool
    copied_from = (
        CopiedLogic(f"{_ALPHA}.__call__", (
            "if self.transformer.config.sample_size == 128:",
            "resolution = torch.tensor([height, width]).repeat(batch_size * num_images_per_prompt, 1)",
            "aspect_ratio = torch.tensor([float(height / width)]).repeat(batch_size * num_images_per_prompt, 1)",
            "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
            "if self.transformer.config.out_channels // 2 == latent_channels: "
            "noise_pred = noise_pred.chunk(2, dim=1)[0]",
        )),
    )


    @classmethod
    def matches(cls, pipe: Any) -> bool:
        # Alpha and sigma share the denoiser class; the pipeline class tells them apart (PixArtSigmaPAGPipeline too).
        return super().matches(pipe) and ("Sigma" in type(pipe).__name__) == cls.sigma

    def tokenize(self, texts, max_sequence_length):
        texts = preprocess_captions(self.pipe, texts)
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

    def prepare_latents(self, batch_size, resolution, generator):
        latents, extras = super().prepare_latents(batch_size, resolution, generator)
        device, dtype = self.device, self.denoiser.dtype
        # eta=0.0 is the pipelines' default (DDIM); the helper keeps only what this scheduler's step accepts.
        extras["step_kwargs"] = self.pipe.prepare_extra_step_kwargs(generator, 0.0)
        added = {"resolution": None, "aspect_ratio": None}
        if not self.sigma and self.denoiser.config.sample_size == 128:
            # PixArt-alpha 1024px micro-conditions, as PixArtAlphaPipeline builds them (CFG doubles the batch).
            size = torch.tensor([[resolution, resolution]] * 2 * batch_size, dtype=dtype, device=device)
            added = {"resolution": size, "aspect_ratio": torch.ones(2 * batch_size, 1, dtype=dtype, device=device)}
        extras["added_cond_kwargs"] = added
        return latents, extras

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
        prediction = self.classifier_free_guidance(prediction, guidance_scale)
        if self.denoiser.config.out_channels // 2 == trajectory.latents.shape[1]:
            prediction = prediction.chunk(2, dim=1)[0]  # learned sigma: the pipeline steps with the mean only
        return prediction

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            sample_size=8,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=tiny.T5_TINY_DIM,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,  # learned sigma: the pipeline keeps the first 4 channels
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
        return {
            "transformer": transformer,
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "vae": tiny.tiny_vae(latent_channels=4),
            # Both published checkpoints sample with DPM-Solver++ (2nd order) on SD's linear betas.
            "scheduler": DPMSolverMultistepScheduler(),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        # Resolution binning only knows the real sample sizes (256-2048 px); the tiny denoiser works on 8x8 latents.
        # clean_caption needs beautifulsoup/ftfy, which the tiny prompts do not need.
        return {"height": 8, "width": 8, "use_resolution_binning": False, "clean_caption": False}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

        transformer = build.empty(lambda: PixArtTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, sample_size=128, patch_size=2, caption_channels=4096,
            interpolation_scale=2 if cls.sigma else None, use_additional_conditions=not cls.sigma,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6))
        return {
            "tokenizer": build.t5_tokenizer(),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "vae": build.real(build.vae(4, scaling_factor=0.18215), 1), "transformer": build.real(transformer, 3),
            "scheduler": DPMSolverMultistepScheduler(),
        }


@register_adapter
class PixArtAlphaAdapter(_PixArtAdapter):
    name = "pixart-alpha"
    pipeline_class = "PixArtAlphaPipeline"
    sigma = False
    # PixArtAlphaPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 120
    # PixArt-XL-2-1024-MS ("0.6B"): the PixArt-Sigma transformer plus the resolution and aspect-ratio embedders.
    synthetic = SyntheticSpec("PixArt-alpha/PixArt-XL-2-1024-MS", {
        "transformer": 611_349_152, "vae": SD_VAE_PARAMETERS, "text_encoder": T5_XXL_PARAMETERS,
    })


@register_adapter
class PixArtSigmaAdapter(_PixArtAdapter):
    name = "pixart-sigma"
    pipeline_class = "PixArtSigmaPipeline"
    sigma = True
    # PixArtSigmaPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 300
    synthetic = SyntheticSpec("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", {
        "transformer": 610_856_096, "vae": SD_VAE_PARAMETERS, "text_encoder": T5_XXL_PARAMETERS,
    })
