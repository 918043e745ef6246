"""Chroma family: FLUX-style, T5 in `text_encoder` with its mask, one pad token left unmasked for the denoiser."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import FLUX_VAE_PARAMETERS, T5_XXL_PARAMETERS

_CHROMA = "diffusers.pipelines.chroma.pipeline_chroma.ChromaPipeline"


@register_adapter
class ChromaAdapter(PipelineAdapter):
    name = "chroma"
    pipeline_class = "ChromaPipeline"
    denoiser_class = "ChromaTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # ChromaPipeline.__call__'s default; unlike FLUX, T5 gets the tokenizer's mask...
    max_sequence_length = 512
    uses_attention_mask = True
    # ...and the transformer attends to the real tokens plus the first pad token.
    denoiser_positions = "tokens+1"
    conditioning_width_key = "joint_attention_dim"
    # True classifier-free guidance: a second transformer pass with the negative prompt ("" by default).
    guidance = "cfg"
    # lodestones/Chroma1-HD scheduler/scheduler_config.json (FLUX.1-dev's).
    scheduler_config = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                        "base_image_seq_len": 256, "max_image_seq_len": 4096}
    copied_from = (
        CopiedLogic(
            f"{_CHROMA}._get_t5_prompt_embeds",
            (
                "seq_lengths = tokenizer_mask_device.sum(dim=1)",
                "mask_indices = torch.arange(tokenizer_mask_device.size(1), device=device).unsqueeze(0)"
                ".expand(batch_size, -1)",
                "attention_mask = (mask_indices <= seq_lengths.unsqueeze(1)).to(dtype=dtype, device=device)",
            ),
        ),
        CopiedLogic(
            f"{_CHROMA}.__call__",
            (
                "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None "
                "else sigmas",
                'mu = calculate_shift(image_seq_len, self.scheduler.config.get("base_image_seq_len", 256), '
                'self.scheduler.config.get("max_image_seq_len", 4096), self.scheduler.config.get("base_shift", 0.5), '
                'self.scheduler.config.get("max_shift", 1.15),)',
                "timestep = t.expand(latents.shape[0]).to(latents.dtype)",
                "noise_pred = neg_noise_pred + guidance_scale * (noise_pred - neg_noise_pred)",
            ),
        ),
        CopiedLogic(
            f"{_CHROMA}.encode_prompt",
            ("text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=device, dtype=dtype)",),
        ),
    )
    # lodestones/Chroma1-HD: a FLUX.1-schnell-derived transformer with a modulation approximator ("8.9B").
    synthetic = SyntheticSpec("lodestones/Chroma1-HD", {"vae": FLUX_VAE_PARAMETERS, "text_encoder": T5_XXL_PARAMETERS},
                              approximate={"transformer": "8.9B"})

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        # The pipeline's helper also returns the denoiser's mask; `predict` rebuilds it from the tokenizer's mask.
        t5, _ = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length,
                                                device=self.teacher.device)
        return {"t5": t5}

    def prepare_latents(self, batch_size, resolution, generator):
        latents, image_ids = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels // 4, resolution, resolution, self.denoiser.dtype,
            self.device, generator,
        )
        return latents, {"image_ids": image_ids}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.chroma.pipeline_chroma import calculate_shift

        config = scheduler.config
        mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        timestep = t.expand(batch).to(latents.dtype) / 1000
        text_ids = torch.zeros(t5.shape[1], 3, device=latents.device, dtype=latents.dtype)
        # The transformer's mask: the text positions it reads, then every image token.
        text_mask = self.attended(attention_mask).to(latents.dtype)
        full_mask = self.pipe._prepare_attention_mask(batch_size=2 * batch, sequence_length=latents.shape[1],
                                                      dtype=latents.dtype, attention_mask=text_mask)
        t5 = t5.to(self.denoiser.dtype)

        def denoise(rows_slice: slice) -> torch.Tensor:
            return self.denoiser(hidden_states=latents, timestep=timestep, encoder_hidden_states=t5[rows_slice],
                                 txt_ids=text_ids, img_ids=trajectory.extras["image_ids"],
                                 attention_mask=full_mask[rows_slice], return_dict=False)[0]

        # Two passes, as the pipeline runs them: the prompts (second half of the rows), then the negatives.
        cond, uncond = denoise(slice(batch, None)), denoise(slice(0, batch))
        return uncond + guidance_scale * (cond - uncond)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = ChromaTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=tiny.T5_TINY_DIM, axes_dims_rope=(4, 4, 8),
            approximator_hidden_dim=32, approximator_layers=1, approximator_num_channels=16,
        )
        return {
            "transformer": transformer,
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "vae": tiny.tiny_vae(latent_channels=1),
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config),
            "image_encoder": None,
            "feature_extractor": None,
        }

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

        transformer = build.empty(lambda: ChromaTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
            approximator_num_channels=64, approximator_hidden_dim=5120, approximator_layers=5))
        vae = build.vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
        return {
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config), "vae": build.real(vae, 1),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(), "transformer": build.real(transformer, 3),
            "image_encoder": None, "feature_extractor": None,
        }
