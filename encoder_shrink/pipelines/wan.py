"""Wan family (2.1, and 2.2's two-expert denoiser): UMT5-XXL in `text_encoder`, its padding zeroed, 5-D latents."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter

_WAN = "diffusers.pipelines.wan.pipeline_wan.WanPipeline"


@register_adapter
class WanAdapter(PipelineAdapter):
    name = "wan"
    pipeline_class = "WanPipeline"
    denoiser_class = "WanTransformer3DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    student_kind = "umt5"
    # WanPipeline.__call__'s default (encode_prompt's own default is 226). The mask goes into UMT5, and the pipeline
    # sets every position past the real tokens to zero: the denoiser reads the real tokens' embeddings only.
    max_sequence_length = 512
    uses_attention_mask = True
    denoiser_positions = "tokens"
    conditioning_width_key = "text_dim"
    guidance = "cfg"
    default_num_frames = 81  # WanPipeline.__call__'s default
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (UniPC on flow predictions, 480p shift).
    scheduler_config = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
    copied_from = (
        CopiedLogic(f"{_WAN}._get_t5_prompt_embeds", (
            "prompt = [prompt_clean(u) for u in prompt]",
            "prompt_embeds = [u[:v] for u, v in zip(prompt_embeds, seq_lens)]",
            "[torch.cat([u, u.new_zeros(max_sequence_length - u.size(0), u.size(1))]) for u in prompt_embeds], dim=0",
        )),
        CopiedLogic(f"{_WAN}.__call__", (
            "num_frames = num_frames // self.vae_scale_factor_temporal * self.vae_scale_factor_temporal + 1",
            "self.scheduler.set_timesteps(num_inference_steps, device=device)",
            "boundary_timestep = self.config.boundary_ratio * self.scheduler.config.num_train_timesteps",
            "if boundary_timestep is None or t >= boundary_timestep:",
            "latent_model_input = latents.to(transformer_dtype)",
            "temp_ts = (mask[0][0][:, ::2, ::2] * t).flatten()",
            "noise_pred = noise_uncond + current_guidance_scale * (noise_pred - noise_uncond)",
        )),
    )
    # Wan-AI/Wan2.1-T2V-14B: the 14 B transformer and google/umt5-xxl's encoder.
    synthetic = SyntheticSpec("Wan-AI/Wan2.1-T2V-14B-Diffusers", {}, teacher="umt5-xxl", student="umt5-base",
                              approximate={"transformer": "14B", "text_encoder": "5.7B"})

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [d for d in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if d is not None]

    def tokenize(self, texts, max_sequence_length):
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return super().tokenize([prompt_clean(text) for text in texts], max_sequence_length)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        t5 = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length,
                                             device=self.teacher.device)
        return {"t5": t5}

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        pipe = self.pipe
        temporal = pipe.vae_scale_factor_temporal
        if num_frames % temporal != 1:  # as the pipeline rounds it (copied_from)
            num_frames = num_frames // temporal * temporal + 1
        multiple = pipe.vae_scale_factor_spatial * self.denoiser.config.patch_size[1]
        size = self.checked_size(resolution, multiple)  # WanPipeline.check_inputs
        latents = pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, size, size, max(num_frames, 1),
                                       torch.float32, self.device, generator)
        return latents, {}

    def _model_at(self, t: torch.Tensor, guidance_scale: float) -> tuple[torch.nn.Module, float]:
        """Wan 2.2: the high-noise expert above the boundary timestep, the low-noise one below (same guidance)."""
        ratio = self.pipe.config.get("boundary_ratio", None)
        if ratio is None or t >= ratio * self.pipe.scheduler.config.num_train_timesteps:
            return self.pipe.transformer, guidance_scale
        return self.pipe.transformer_2, guidance_scale

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        model, scale = self._model_at(t, guidance_scale)
        dtype = model.dtype
        # What the pipeline hands the denoiser: the real tokens' embeddings, zeros after them.
        t5 = t5.to(dtype) * attention_mask[..., None].to(dtype)
        batch = latents.shape[0]
        if self.pipe.config.get("expand_timesteps", False):  # Wan 2.2 TI2V: one timestep per latent token
            timestep = (torch.ones_like(latents[0][0][:, ::2, ::2]) * t).flatten().unsqueeze(0).expand(batch, -1)
        else:
            timestep = t.expand(batch)
        model_input = latents.to(dtype)

        def denoise(embeddings: torch.Tensor) -> torch.Tensor:
            return model(hidden_states=model_input, timestep=timestep, encoder_hidden_states=embeddings,
                         return_dict=False)[0]

        # Two passes as the pipeline runs them: prompts (second half of the rows), then negatives.
        cond, uncond = denoise(t5[batch:]), denoise(t5[:batch])
        return uncond + scale * (cond - uncond)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=tiny.T5_TINY_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )
        return {
            "transformer": transformer, "vae": vae,
            "scheduler": UniPCMultistepScheduler(**cls.scheduler_config),
            "text_encoder": tiny.tiny_umt5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "transformer_2": None,
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 16, "width": 16, "num_frames": 5}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

        # Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json
        transformer = build.empty(lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024))
        vae = build.empty(lambda: AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                                   temperal_downsample=[False, True, True]))
        return {
            "transformer": build.real(transformer, 3), "vae": build.real(vae, 1),
            "scheduler": UniPCMultistepScheduler(**{**cls.scheduler_config, "flow_shift": 5.0}),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length), "transformer_2": None,
        }


@register_adapter
class SkyReelsV2Adapter(WanAdapter):
    """SkyReels-V2 text-to-video: Wan's call (UMT5, zero padding, two-pass CFG) on its own transformer."""

    name = "skyreels-v2"
    pipeline_class = "SkyReelsV2Pipeline"
    denoiser_class = "SkyReelsV2Transformer3DModel"
    default_num_frames = 97  # SkyReelsV2Pipeline.__call__'s default
    # Skywork/SkyReels-V2-T2V-14B-540P-Diffusers: UniPC on flow predictions, shift 8.
    scheduler_config = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 8.0}
    copied_from = (
        CopiedLogic("diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2.SkyReelsV2Pipeline._get_t5_prompt_embeds", (
            "prompt = [prompt_clean(u) for u in prompt]",
            "prompt_embeds = [u[:v] for u, v in zip(prompt_embeds, seq_lens)]",
        )),
        CopiedLogic("diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2.SkyReelsV2Pipeline.__call__", (
            "self.scheduler.set_timesteps(num_inference_steps, device=device)",
            "timestep = t.expand(latents.shape[0])",
            "noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)",
        )),
    )
    synthetic = SyntheticSpec("Skywork/SkyReels-V2-T2V-14B-540P-Diffusers", {}, teacher="umt5-xxl",
                              student="umt5-base",
                              approximate={"transformer": "14B", "text_encoder": "5.7B"})

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def tokenize(self, texts, max_sequence_length):
        from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2 import prompt_clean

        return PipelineAdapter.tokenize(self, [prompt_clean(text) for text in texts], max_sequence_length)

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        pipe = self.pipe
        temporal = pipe.vae_scale_factor_temporal
        if num_frames % temporal != 1:
            num_frames = num_frames // temporal * temporal + 1
        latents = pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, resolution, resolution,
                                       max(num_frames, 1), torch.float32, self.device, generator)
        return latents, {}

    def _model_at(self, t, guidance_scale):
        return self.pipe.transformer, guidance_scale

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import SkyReelsV2Transformer3DModel

        components = super().tiny_components(seed)
        del components["transformer_2"]
        torch.manual_seed(seed)
        # The same tiny layout as Wan's (SkyReels-V2 takes every WanTransformer3DModel argument).
        components["transformer"] = SkyReelsV2Transformer3DModel.from_config(components["transformer"].config)
        return components

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import SkyReelsV2Transformer3DModel

        components = super().synthetic_components(build, text_encoder)
        del components["transformer_2"]
        components["scheduler"] = type(components["scheduler"])(**cls.scheduler_config)
        # The Wan 2.1 14 B layout (SkyReels-V2 is trained from it).
        components["transformer"] = build.real(build.empty(lambda: SkyReelsV2Transformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)), 3)
        return components
