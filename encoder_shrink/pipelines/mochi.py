"""Mochi family: T5-XXL in `text_encoder`, called with the mask, which the denoiser applies too; 5-D latents."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS

_MOCHI = "diffusers.pipelines.mochi.pipeline_mochi.MochiPipeline"
# MochiPipeline.__call__'s sigma schedule: linear down to this noise level over the first half, then quadratic.
THRESHOLD_NOISE = 0.025


@register_adapter
class MochiAdapter(PipelineAdapter):
    name = "mochi"
    pipeline_class = "MochiPipeline"
    denoiser_class = "MochiTransformer3DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # MochiPipeline.__call__'s default; the mask goes into T5 and into the denoiser's joint attention.
    max_sequence_length = 256
    uses_attention_mask = True
    denoiser_positions = "tokens"
    conditioning_width_key = "text_embed_dim"
    guidance = "cfg"
    default_num_frames = 19  # MochiPipeline.__call__'s default
    copied_from = (
        CopiedLogic(f"{_MOCHI}._get_t5_prompt_embeds", (
            'if self.config.force_zeros_for_empty_prompt and (prompt == "" or prompt[-1] == ""):',
            "text_input_ids = torch.zeros_like(text_input_ids, device=device)",
            "prompt_embeds = self.text_encoder(text_input_ids.to(device), attention_mask=prompt_attention_mask)[0]",
        )),
        CopiedLogic(f"{_MOCHI}.__call__", (
            "sigmas = linear_quadratic_schedule(num_inference_steps, threshold_noise)",
            "timestep = t.expand(latent_model_input.shape[0]).to(latents.dtype)",
            "noise_pred = noise_pred.to(torch.float32)",
            "latents = self.scheduler.step(noise_pred, t, latents.to(torch.float32), return_dict=False)[0]",
        )),
    )
    # genmo/mochi-1-preview ("10B"): diffusers' default transformer is its layout.
    synthetic = SyntheticSpec("genmo/mochi-1-preview", {"text_encoder": T5_XXL_PARAMETERS},
                              approximate={"transformer": "10B"})

    def tokenize(self, texts, max_sequence_length):
        ids, mask = super().tokenize(texts, max_sequence_length)
        if self.pipe.config.get("force_zeros_for_empty_prompt", False):
            # The pipeline zeroes the ids and the mask of an empty (negative) prompt; the denoiser then reads none of
            # its positions.
            empty = torch.tensor([text == "" for text in texts], device=ids.device)[:, None]
            ids, mask = ids.masked_fill(empty, 0), mask.masked_fill(empty, 0)
        return ids, mask

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenize(texts, max_sequence_length)
        device = self.teacher.device
        return {"t5": self.teacher(ids.to(device), attention_mask=mask.bool().to(device))[0]}

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        size = self.checked_size(resolution, 8)  # MochiPipeline.check_inputs
        latents = self.pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, size, size, num_frames,
                                            self.denoiser.dtype, self.device, generator)
        return latents, {}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

        if num_inference_steps < 2:  # the schedule splits the steps into a linear and a quadratic half
            raise InvalidArgumentError(
                f"MochiPipeline's sigma schedule needs at least 2 steps, got {num_inference_steps}; set the recipe's "
                "num_inference_steps to 2 or more."
            )
        return {"sigmas": np.array(linear_quadratic_schedule(num_inference_steps, THRESHOLD_NOISE))}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        model_input = torch.cat([latents] * 2)
        prediction = self.denoiser(
            hidden_states=model_input, encoder_hidden_states=t5.to(self.denoiser.dtype),
            timestep=t.expand(model_input.shape[0]).to(latents.dtype), encoder_attention_mask=attention_mask.bool(),
            return_dict=False,
        )[0].to(torch.float32)
        return self.classifier_free_guidance(prediction, guidance_scale)

    def step(self, trajectory, prediction, t) -> None:
        dtype = trajectory.latents.dtype  # the pipeline steps in float32 and casts back
        latents = trajectory.scheduler.step(prediction, t, trajectory.latents.to(torch.float32), return_dict=False)[0]
        trajectory.latents = latents.to(dtype)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiTransformer3DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = MochiTransformer3DModel(
            patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, pooled_projection_dim=16,
            in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=tiny.T5_TINY_DIM,
            time_embed_dim=32, activation_fn="swiglu", max_sequence_length=cls.max_sequence_length,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                                 decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
        return {
            "transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(),
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 16, "width": 16, "num_frames": 7}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiTransformer3DModel

        return {
            "transformer": build.real(build.empty(MochiTransformer3DModel), 3),
            "vae": build.real(build.empty(AutoencoderKLMochi), 1), "scheduler": FlowMatchEulerDiscreteScheduler(),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
        }
