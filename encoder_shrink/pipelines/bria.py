"""Bria family: T5 in `text_encoder` on each prompt at its own length, the embeddings zero-padded to max length."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS

_BRIA = "diffusers.pipelines.bria.pipeline_bria.BriaPipeline"


@register_adapter
class BriaAdapter(PipelineAdapter):
    name = "bria"
    pipeline_class = "BriaPipeline"
    denoiser_class = "BriaTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # BriaPipeline.__call__'s default. Each prompt goes through T5 alone, unpadded and without a mask; the pipeline
    # pads the embeddings with zeros, so the denoiser reads the real tokens' embeddings and zeros after them.
    max_sequence_length = 128
    uses_attention_mask = False
    pads_prompts = False
    denoiser_positions = "tokens"
    conditioning_width_key = "joint_attention_dim"
    guidance = "cfg"
    # briaai/BRIA-3.2 scheduler/scheduler_config.json
    scheduler_config = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                        "base_image_seq_len": 256, "max_image_seq_len": 4096, "time_shift_type": "exponential"}
    copied_from = (
        CopiedLogic(f"{_BRIA}._get_t5_prompt_embeds", (
            "prompt_embeds = text_encoder(text_input_ids.to(device))[0]",
            "padding = torch.zeros((b, max_sequence_length - seq_len, dim), dtype=prompt_embeds.dtype, "
            "device=prompt_embeds.device)",
        )),
        CopiedLogic(f"{_BRIA}.encode_prompt", (
            "negative_prompt_embeds = torch.zeros_like(prompt_embeds)",
        )),
        CopiedLogic(f"{_BRIA}.__call__", (
            "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)",
            "mu = calculate_shift(image_seq_len, self.scheduler.config.base_image_seq_len, "
            "self.scheduler.config.max_image_seq_len, self.scheduler.config.base_shift, "
            "self.scheduler.config.max_shift,)",
            "sigmas = get_original_sigmas(num_train_timesteps=self.scheduler.config.num_train_timesteps, "
            "num_inference_steps=num_inference_steps,)",
            "if type(self.scheduler) != FlowMatchEulerDiscreteScheduler: "
            "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
            "timestep = t.expand(latent_model_input.shape[0])",
        )),
    )
    # briaai/BRIA-3.2: transformer/diffusion_pytorch_model.safetensors.index.json total_size 15,142,677,568 bytes in
    # fp32 ("4B"); T5-XXL.
    synthetic = SyntheticSpec(
        "briaai/BRIA-3.2", {"transformer": 15_142_677_568 // 4, "text_encoder": T5_XXL_PARAMETERS}
    )

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        # Without a negative prompt the pipeline's unconditional embeddings are zeros: nothing for T5 to encode.
        return list(prompts) if not negative_prompt else [negative_prompt] * len(prompts) + list(prompts)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        t5 = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length,
                                             device=self.teacher.device)
        return {"t5": t5}

    def prepare_latents(self, batch_size, resolution, generator):
        latents, image_ids = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels // 4, resolution, resolution, self.denoiser.dtype,
            self.device, generator,
        )
        return latents, {"image_ids": image_ids[0] if image_ids.ndim == 3 else image_ids}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.bria.pipeline_bria import calculate_shift, get_original_sigmas

        config = scheduler.config
        if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and config["use_dynamic_shifting"]:
            mu = calculate_shift(latents.shape[1], config.base_image_seq_len, config.max_image_seq_len,
                                 config.base_shift, config.max_shift)
            return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}
        if isinstance(scheduler, (DDIMScheduler, EulerAncestralDiscreteScheduler)):
            return {}
        return {"sigmas": get_original_sigmas(config.num_train_timesteps, num_inference_steps)}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler

        latents = trajectory.latents
        # What the pipeline hands the denoiser: the real tokens' embeddings, zeros after them.
        t5 = t5.to(self.denoiser.dtype) * attention_mask[..., None].to(self.denoiser.dtype)
        if t5.shape[0] == latents.shape[0]:  # no negative prompt: zero unconditional embeddings
            t5 = torch.cat([torch.zeros_like(t5), t5])
        model_input = torch.cat([latents] * 2)
        if type(trajectory.scheduler) is not FlowMatchEulerDiscreteScheduler:
            model_input = trajectory.scheduler.scale_model_input(model_input, t)
        text_ids = torch.zeros(t5.shape[1], 3, device=latents.device, dtype=latents.dtype)
        prediction = self.denoiser(
            hidden_states=model_input, timestep=t.expand(model_input.shape[0]), encoder_hidden_states=t5,
            txt_ids=text_ids, img_ids=trajectory.extras["image_ids"], return_dict=False,
        )[0]
        return self.classifier_free_guidance(prediction, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKL, BriaTransformer2DModel, FlowMatchEulerDiscreteScheduler

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = BriaTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=tiny.T5_TINY_DIM, pooled_projection_dim=None,
            axes_dims_rope=[0, 4, 4],
        )
        torch.manual_seed(seed)
        # BriaPipeline's latent scale is 2 ** len(block_out_channels): one block halves the image.
        vae = AutoencoderKL(
            block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D"], latent_channels=4, sample_size=32, norm_num_groups=4,
            shift_factor=0, scaling_factor=0.13025, force_upcast=False,
        )
        return {
            "transformer": transformer,
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "vae": vae,
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config),
            "image_encoder": None,
            "feature_extractor": None,
        }

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import BriaTransformer2DModel, FlowMatchEulerDiscreteScheduler

        # briaai/BRIA-3.2 transformer/config.json
        transformer = build.empty(lambda: BriaTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=8, num_single_layers=28, attention_head_dim=96,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=None, guidance_embeds=False,
            axes_dims_rope=[0, 48, 48], rope_theta=10000, time_theta=10000))
        return {
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config),
            "vae": build.real(build.vae(4, scaling_factor=0.13025, shift_factor=0), 1),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length), "transformer": build.real(transformer, 3),
            "image_encoder": None, "feature_extractor": None,
        }
