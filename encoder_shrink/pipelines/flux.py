"""FLUX.1 families: dev (guidance-distilled, 512 tokens) and schnell (no guidance embedding, 256 tokens)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter

_FLUX_CALL = "diffusers.pipelines.flux.pipeline_flux.FluxPipeline.__call__"
# The T5-XXL v1.1 encoder every T5 family ships (google/t5-v1_1-xxl's encoder half).
T5_XXL_PARAMETERS = 4_762_310_656
# The FLUX.1 VAE (16 latent channels, no quant convs).
FLUX_VAE_PARAMETERS = 83_819_683


class _FluxAdapter(PipelineAdapter):
    pipeline_class = "FluxPipeline"
    denoiser_class = "FluxTransformer2DModel"
    encoder_slot = "text_encoder_2"
    tokenizer_slot = "tokenizer_2"
    # FluxPipeline calls T5 on inputs padded to max length and passes no attention mask.
    uses_attention_mask = False
    conditioning_width_key = "joint_attention_dim"
    guidance_embeds: bool
    scheduler_config: dict
    copied_from = (
        CopiedLogic(_FLUX_CALL, (
            "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas",
            'if hasattr(self.scheduler.config, "use_flow_sigmas") and self.scheduler.config.use_flow_sigmas: '
            "sigmas = None",
            "image_seq_len = latents.shape[1]",
            'mu = calculate_shift(image_seq_len, self.scheduler.config.get("base_image_seq_len", 256), '
            'self.scheduler.config.get("max_image_seq_len", 4096), self.scheduler.config.get("base_shift", 0.5), '
            'self.scheduler.config.get("max_shift", 1.15),)',
            "guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)",
            "timestep = t.expand(latents.shape[0]).to(latents.dtype)",
            "timestep=timestep / 1000,",
        )),
        # The text ids the pipeline pairs with the T5 tokens: zeros, one row per token.
        CopiedLogic("diffusers.pipelines.flux.pipeline_flux.FluxPipeline.encode_prompt", (
            "text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=device, dtype=dtype)",
        )),
    )

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return super().matches(pipe) and bool(pipe.transformer.config.guidance_embeds) == cls.guidance_embeds

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        # Each encoder runs where it is (the teacher may have been offloaded to the CPU); the cache moves rows.
        t5 = self.pipe._get_t5_prompt_embeds(
            texts, max_sequence_length=max_sequence_length, device=self.teacher.device
        )
        pooled = self.pipe._get_clip_prompt_embeds(texts, device=self.pipe.text_encoder.device)
        return {"t5": t5, "pooled": pooled}

    def prepare_latents(self, batch_size, resolution, generator):
        # Packed latents (2x2 patches) and their position ids, from the pipeline's own helper.
        latents, image_ids = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels // 4, resolution, resolution, self.denoiser.dtype,
            self.device, generator,
        )
        return latents, {"image_ids": image_ids}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        # Imported here: loading the pipeline module costs seconds that `import encoder_shrink` should not pay.
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = scheduler.config
        # Same sigmas and resolution-dependent shift as FluxPipeline.__call__ (copied_from).
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
        return {"sigmas": sigmas, "mu": mu}

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

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,  # 1 latent channel packed 2x2, as FluxPipeline packs latents
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=tiny.T5_TINY_DIM,
            pooled_projection_dim=tiny.CLIP_TINY_DIM,
            guidance_embeds=cls.guidance_embeds,
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        )
        return {
            "transformer": transformer,
            "text_encoder": CLIPTextModel(tiny.tiny_clip_text_config()).eval(),
            "text_encoder_2": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_clip_tokenizer(),
            "tokenizer_2": tiny.tiny_t5_tokenizer(512),
            "vae": tiny.tiny_vae(latent_channels=1),
            # The published checkpoint's scheduler, so the tiny pipeline samples with the real schedule and shift.
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config),
        }

    @classmethod
    def tiny_drop_in(cls, pipeline_class: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        from diffusers import FluxTransformer2DModel
        from PIL import Image

        from encoder_shrink import tiny

        components = cls.tiny_components(seed)
        image = Image.new("RGB", (16, 16), (200, 40, 40))
        # Channels the transformer takes per packed token: latents plus what the variant concatenates (the masked
        # image and its mask for Fill, the control image's latents for Control), as in diffusers' own tiny tests.
        latent_channels, in_channels, out_channels, call = {
            "FluxKontextPipeline": (1, 4, None, {"image": image, "max_area": 16 * 16, "_auto_resize": False}),
            "FluxFillPipeline": (2, 20, 8, {"image": image, "mask_image": Image.new("L", (16, 16), 255)}),
            "FluxControlPipeline": (1, 8, 4, {"control_image": image}),
        }[pipeline_class]
        torch.manual_seed(seed)
        config = {k: v for k, v in components["transformer"].config.items() if not k.startswith("_")}
        config.update(in_channels=in_channels, out_channels=out_channels)
        components["transformer"] = FluxTransformer2DModel(**config)
        components["vae"] = tiny.tiny_vae(latent_channels=latent_channels)
        if pipeline_class == "FluxKontextPipeline":
            components.update(image_encoder=None, feature_extractor=None)
        return components, {"height": 16, "width": 16, **call}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

        transformer = build.empty(lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            guidance_embeds=cls.guidance_embeds, axes_dims_rope=(16, 56, 56)))
        vae = build.vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
        clip = build.clip_text(768, 12, 12, 3072, 768, "quick_gelu", with_projection=False)
        return {
            "scheduler": FlowMatchEulerDiscreteScheduler(**cls.scheduler_config),
            "vae": build.real(vae, 1), "text_encoder": build.real(clip, 2), "tokenizer": build.clip_tokenizer(),
            "text_encoder_2": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer_2": build.t5_tokenizer(), "transformer": build.real(transformer, 3),
        }


@register_adapter
class FluxDevAdapter(_FluxAdapter):
    name = "flux-dev"
    # The FLUX.1-dev derivatives that call T5 as FluxPipeline does: a flux-dev student drops into them.
    drop_in_pipelines = ("FluxKontextPipeline", "FluxFillPipeline", "FluxControlPipeline")
    guidance_embeds = True
    guidance = "embedded"
    # FluxPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 512
    # black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json
    scheduler_config = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                        "base_image_seq_len": 256, "max_image_seq_len": 4096}
    synthetic = SyntheticSpec("black-forest-labs/FLUX.1-dev", {
        "transformer": 11_901_408_320, "vae": FLUX_VAE_PARAMETERS, "text_encoder_2": T5_XXL_PARAMETERS,
    })


@register_adapter
class FluxSchnellAdapter(_FluxAdapter):
    name = "flux-schnell"
    guidance_embeds = False
    guidance = None
    max_sequence_length = 256
    length_note = "FLUX.1-schnell was trained with 256 T5 tokens (its model card calls with max_sequence_length=256)"
    # black-forest-labs/FLUX.1-schnell scheduler/scheduler_config.json: no resolution-dependent shift.
    scheduler_config = {"shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15,
                        "base_image_seq_len": 256, "max_image_seq_len": 4096}
    # FLUX.1-dev without the guidance embedder (two Linear layers, 10,229,760 parameters).
    synthetic = SyntheticSpec("black-forest-labs/FLUX.1-schnell", {
        "transformer": 11_891_178_560, "vae": FLUX_VAE_PARAMETERS, "text_encoder_2": T5_XXL_PARAMETERS,
    })
