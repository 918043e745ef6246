"""Latte family: T5-XXL in `text_encoder` with the mask at a fixed 120 tokens, cut or zeroed before the denoiser."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS
from encoder_shrink.pipelines.pixart import SD_VAE_PARAMETERS, preprocess_captions

_LATTE = "diffusers.pipelines.latte.pipeline_latte.LattePipeline"


@register_adapter
class LatteAdapter(PipelineAdapter):
    name = "latte"
    pipeline_class = "LattePipeline"
    denoiser_class = "LatteTransformer3DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    max_sequence_length = 120
    length_note = "LattePipeline.encode_prompt pads to a fixed 120 tokens; its __call__ has no max_sequence_length"
    uses_attention_mask = True
    # No mask reaches the denoiser. With one prompt the pipeline cuts both rows to the prompt's token count; with more
    # it zeroes the prompts' padding and keeps all 120 positions of the negatives. A student matching every position
    # serves both, so every position counts.
    denoiser_positions = None
    conditioning_width_key = "caption_channels"
    guidance = "cfg"
    default_num_frames = 16  # LattePipeline.__call__'s video_length
    frames_argument = "video_length"
    copied_from = (
        CopiedLogic(f"{_LATTE}.encode_prompt", (
            "max_length = 120",
            "prompt_embeds = self.text_encoder(text_input_ids.to(device), attention_mask=attention_mask)",
            "if mask_feature and not embeds_initially_provided:",
        )),
        CopiedLogic(f"{_LATTE}.mask_text_embeddings", (
            "keep_index = mask.sum().item()",
            "masked_feature = emb * mask[:, None, :, None]",
        )),
        CopiedLogic(f"{_LATTE}.__call__", (
            "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
            "current_timestep = current_timestep.expand(latent_model_input.shape[0])",
            "noise_pred = noise_pred.chunk(2, dim=1)[0]",
        )),
    )
    # maxin-cn/Latte-1: 28 spatial and 28 temporal blocks (1.06 B; no rounded count is published), SD's VAE, T5-XXL.
    synthetic = SyntheticSpec("maxin-cn/Latte-1", {"vae": SD_VAE_PARAMETERS, "text_encoder": T5_XXL_PARAMETERS},
                              unpublished=("transformer",))

    def tokenize(self, texts, max_sequence_length):
        return super().tokenize(preprocess_captions(self.pipe, texts), max_sequence_length)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenize(texts, max_sequence_length)
        device = self.teacher.device
        return {"t5": self.teacher(ids.to(device), attention_mask=mask.to(device))[0]}

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        pipe = self.pipe
        frames = self.denoiser.config.video_length
        if num_frames not in (1, frames):  # its temporal position table has exactly `video_length` rows
            raise InvalidArgumentError(
                f"{type(self.denoiser).__name__} generates {frames} frames (or 1), not {num_frames}; set the recipe's "
                f"num_frames to {frames}."
            )
        size = self.checked_size(resolution, 8)  # LattePipeline.check_inputs
        latents = pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, num_frames, size, size,
                                       self.denoiser.dtype, self.device, generator)
        # eta=0.0 is the pipeline's default; the helper keeps only what this scheduler's step accepts.
        return latents, {"step_kwargs": pipe.prepare_extra_step_kwargs(generator, 0.0)}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        batch = trajectory.latents.shape[0]
        t5 = t5.to(self.denoiser.dtype)
        negative, positive, mask = t5[:batch], t5[batch:], attention_mask[batch:]
        if batch == 1:  # mask_text_embeddings: both rows cut to the prompt's token count
            keep = int(mask.sum())
            negative, positive = negative[:, :keep], positive[:, :keep]
        else:  # the prompts' padding zeroed, the negatives untouched
            positive = positive * mask[..., None].to(positive.dtype)
        model_input = trajectory.scheduler.scale_model_input(torch.cat([trajectory.latents] * 2), t)
        timestep = (t[None] if t.ndim == 0 else t).to(model_input.device).expand(model_input.shape[0])
        prediction = self.denoiser(model_input, encoder_hidden_states=torch.cat([negative, positive]),
                                   timestep=timestep, enable_temporal_attentions=True, return_dict=False)[0]
        prediction = self.classifier_free_guidance(prediction, guidance_scale)
        if trajectory.scheduler.config.get("variance_type") not in ("learned", "learned_range"):
            prediction = prediction.chunk(2, dim=1)[0]  # the pipeline steps with the mean only
        return prediction

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import DDIMScheduler, LatteTransformer3DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = LatteTransformer3DModel(
            sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=tiny.T5_TINY_DIM, in_channels=4, cross_attention_dim=24, out_channels=8,
            attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, video_length=2,
        )
        return {
            "transformer": transformer, "vae": tiny.tiny_vae(latent_channels=4), "scheduler": DDIMScheduler(),
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        # clean_caption needs beautifulsoup/ftfy, which the tiny prompts do not need.
        return {"height": 8, "width": 8, "video_length": 2, "clean_caption": False}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import DDIMScheduler, LatteTransformer3DModel

        # maxin-cn/Latte-1 transformer/config.json
        transformer = build.empty(lambda: LatteTransformer3DModel(
            sample_size=64, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
            caption_channels=4096, in_channels=4, cross_attention_dim=1152, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6))
        return {
            "transformer": build.real(transformer, 3), "vae": build.real(build.vae(4, scaling_factor=0.18215), 1),
            "scheduler": DDIMScheduler(beta_schedule="linear"),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
        }
