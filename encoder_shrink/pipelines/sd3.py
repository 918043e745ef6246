"""Stable Diffusion 3 and 3.5 families: T5 in `text_encoder_3`, concatenated with CLIP-L/G along the sequence.

The three published MMDiT layouts are separate families (a student learns one denoiser): SD3-medium, SD3.5-large
(q/k RMS norms) and SD3.5-medium (MMDiT-X: dual attention in its first 13 layers, q/k RMS norms).
"""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import FLUX_VAE_PARAMETERS, T5_XXL_PARAMETERS

_SD3 = "diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3.StableDiffusion3Pipeline"


@register_adapter
class SD3Adapter(PipelineAdapter):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_class = "SD3Transformer2DModel"
    encoder_slot = "text_encoder_3"
    tokenizer_slot = "tokenizer_3"
    # StableDiffusion3Pipeline.__call__'s default max_sequence_length; no attention mask reaches T5.
    max_sequence_length = 256
    uses_attention_mask = False
    conditioning_width_key = "joint_attention_dim"
    guidance = "cfg"
    # stabilityai/stable-diffusion-3-medium-diffusers scheduler/scheduler_config.json
    scheduler_config = {"shift": 3.0}
    # The published MMDiT's size (transformer/config.json).
    mmdit = {"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "pos_embed_max_size": 192}
    copied_from = (
        CopiedLogic(f"{_SD3}.encode_prompt", (
            "clip_prompt_embeds = torch.cat([prompt_embed, prompt_2_embed], dim=-1)",
            "clip_prompt_embeds = torch.nn.functional.pad(clip_prompt_embeds, "
            "(0, t5_prompt_embed.shape[-1] - clip_prompt_embeds.shape[-1]))",
            "prompt_embeds = torch.cat([clip_prompt_embeds, t5_prompt_embed], dim=-2)",
            "pooled_prompt_embeds = torch.cat([pooled_prompt_embed, pooled_prompt_2_embed], dim=-1)",
        )),
        CopiedLogic(f"{_SD3}.__call__", (
            'if self.scheduler.config.get("use_dynamic_shifting", None) and mu is None:',
            "image_seq_len = (height // self.transformer.config.patch_size) * (width // "
            "self.transformer.config.patch_size)",
            'self.scheduler.config.get("max_shift", 1.16),',
            "timestep = t.expand(latent_model_input.shape[0])",
        )),
    )
    # stabilityai/stable-diffusion-3-medium: MMDiT 2B, the FLUX-style 16-channel VAE, CLIP-L, CLIP-G and T5-XXL.
    synthetic = SyntheticSpec("stabilityai/stable-diffusion-3-medium-diffusers", {
        "transformer": 2_028_328_000, "vae": FLUX_VAE_PARAMETERS, "text_encoder_3": T5_XXL_PARAMETERS,
    })

    # The MMDiT layout that tells the published checkpoints apart (SD3-medium: plain attention).
    qk_norm: str | None = None
    dual_attention_layers: tuple[int, ...] = ()

    @classmethod
    def matches(cls, pipe) -> bool:
        if not super().matches(pipe):
            return False
        config = pipe.transformer.config
        return (config.qk_norm is not None) == (cls.qk_norm is not None) and bool(
            config.dual_attention_layers
        ) == bool(cls.dual_attention_layers)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        # Each encoder runs where it is (the teacher may have been offloaded to the CPU); the cache moves rows.
        t5 = self.pipe._get_t5_prompt_embeds(
            texts, max_sequence_length=max_sequence_length, device=self.teacher.device
        )
        clip_device = self.pipe.text_encoder.device
        clip_l, pooled_l = self.pipe._get_clip_prompt_embeds(texts, device=clip_device, clip_model_index=0)
        clip_g, pooled_g = self.pipe._get_clip_prompt_embeds(texts, device=clip_device, clip_model_index=1)
        # As StableDiffusion3Pipeline.encode_prompt (copied_from): CLIP-L and CLIP-G side by side, zero-padded to the
        # T5 width; they precede the T5 tokens along the sequence.
        clip = torch.cat([clip_l, clip_g], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"t5": t5, "clip": clip, "pooled": torch.cat([pooled_l, pooled_g], dim=-1)}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        if not scheduler.config.get("use_dynamic_shifting", None):
            return {}
        patch = self.denoiser.config.patch_size
        return {"mu": calculate_shift(
            (latents.shape[2] // patch) * (latents.shape[3] // patch),
            scheduler.config.get("base_image_seq_len", 256),
            scheduler.config.get("max_image_seq_len", 4096),
            scheduler.config.get("base_shift", 0.5),
            scheduler.config.get("max_shift", 1.16),
        )}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        model_input = torch.cat([trajectory.latents] * 2)
        prediction = self.denoiser(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=torch.cat([rows["clip"], t5.to(rows["clip"].dtype)], dim=-2),
            pooled_projections=rows["pooled"],
            return_dict=False,
        )[0]
        return self.classifier_free_guidance(prediction, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=tiny.T5_TINY_DIM,  # CLIP-L + CLIP-G (2 x 16) are padded to the T5 width
            pooled_projection_dim=2 * tiny.CLIP_TINY_DIM,  # pooled CLIP-L and CLIP-G, concatenated
            out_channels=4,
            qk_norm=cls.qk_norm,
            dual_attention_layers=tuple(i for i in cls.dual_attention_layers if i < 1),  # the tiny one has 1 layer
        )
        torch.manual_seed(seed + 1)
        clip_l = CLIPTextModelWithProjection(tiny.tiny_clip_text_config()).eval()
        clip_g = CLIPTextModelWithProjection(tiny.tiny_clip_text_config()).eval()
        return {
            "transformer": transformer,
            "text_encoder": clip_l,
            "text_encoder_2": clip_g,
            "text_encoder_3": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_clip_tokenizer(),
            "tokenizer_2": tiny.tiny_clip_tokenizer(),
            "tokenizer_3": tiny.tiny_t5_tokenizer(256),
            "vae": tiny.tiny_vae(latent_channels=4),
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config),
        }

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

        transformer = build.empty(lambda: SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, attention_head_dim=64, joint_attention_dim=4096,
            pooled_projection_dim=2048, out_channels=16, qk_norm=cls.qk_norm,
            dual_attention_layers=cls.dual_attention_layers, **cls.mmdit))
        vae = build.vae(
            16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False
        )
        clip_l = build.clip_text(768, 12, 12, 3072, 768, "quick_gelu", with_projection=True)
        clip_g = build.clip_text(1280, 32, 20, 5120, 1280, "gelu", with_projection=True)
        return {
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config), "vae": build.real(vae, 1),
            "text_encoder": build.real(clip_l, 2), "tokenizer": build.clip_tokenizer(),
            "text_encoder_2": build.real(clip_g, 4), "tokenizer_2": build.clip_tokenizer(),
            "text_encoder_3": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer_3": build.t5_tokenizer(), "transformer": build.real(transformer, 3),
        }


@register_adapter
class SD35LargeAdapter(SD3Adapter):
    name = "sd3.5-large"
    qk_norm = "rms_norm"
    mmdit = {"num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432, "pos_embed_max_size": 192}
    synthetic = SyntheticSpec("stabilityai/stable-diffusion-3.5-large", {
        "vae": FLUX_VAE_PARAMETERS, "text_encoder_3": T5_XXL_PARAMETERS,
    }, approximate={"transformer": "8.1B"})


@register_adapter
class SD35MediumAdapter(SD3Adapter):
    name = "sd3.5-medium"
    qk_norm = "rms_norm"
    dual_attention_layers = tuple(range(13))  # MMDiT-X
    mmdit = {"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "pos_embed_max_size": 384}
    # Stability announces "2.5 B"; the published transformer config (24 x 24 heads, MMDiT-X in layers 0-12) holds
    # 2,243,171,520 parameters, and that is what is checked.
    synthetic = SyntheticSpec("stabilityai/stable-diffusion-3.5-medium", {
        "transformer": 2_243_171_520, "vae": FLUX_VAE_PARAMETERS, "text_encoder_3": T5_XXL_PARAMETERS,
    })
