"""LTX-Video family: T5-XXL in `text_encoder` without a mask; the mask goes to the denoiser; packed 5-D latents."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS

_LTX = "diffusers.pipelines.ltx.pipeline_ltx.LTXPipeline"
# LTXPipeline.__call__'s default frame rate: it scales the rotary positions along time.
FRAME_RATE = 25
# Lightricks/LTX-Video scheduler/scheduler_config.json: the shift grows with the sequence length (0.95 at 1024
# tokens, 2.05 at 4096), which is why the adapter computes `mu` as the pipeline does.
SCHEDULER_CONFIG = {"use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05, "base_image_seq_len": 1024,
                    "max_image_seq_len": 4096, "shift_terminal": 0.1}


@register_adapter
class LTXAdapter(PipelineAdapter):
    name = "ltx"
    pipeline_class = "LTXPipeline"
    denoiser_class = "LTXVideoTransformer3DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # LTXPipeline.__call__'s default. T5 runs without a mask; the denoiser's cross-attention masks the padding.
    max_sequence_length = 128
    uses_attention_mask = False
    denoiser_positions = "tokens"
    conditioning_width_key = "caption_channels"
    guidance = "cfg"
    default_num_frames = 161  # LTXPipeline.__call__'s default
    copied_from = (
        CopiedLogic(f"{_LTX}._get_t5_prompt_embeds", (
            "prompt_embeds = self.text_encoder(text_input_ids.to(device))[0]",
        )),
        CopiedLogic(f"{_LTX}.__call__", (
            "latent_num_frames = (num_frames - 1) // self.vae_temporal_compression_ratio + 1",
            "video_sequence_length = latent_num_frames * latent_height * latent_width",
            "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)",
            'self.scheduler.config.get("base_image_seq_len", 256)',
            "self.vae_temporal_compression_ratio / frame_rate",
            "latent_model_input = latent_model_input.to(prompt_embeds.dtype)",
            "noise_pred = noise_pred.float()",
        )),
    )
    # Lightricks/LTX-Video ("2B"): diffusers' default transformer and VAE are its 0.9 release.
    synthetic = SyntheticSpec("Lightricks/LTX-Video", {"text_encoder": T5_XXL_PARAMETERS},
                              approximate={"transformer": "2B"})

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        t5, _ = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length,
                                                device=self.teacher.device)
        return {"t5": t5}

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        pipe = self.pipe
        size = self.checked_size(resolution, 32)  # LTXPipeline.check_inputs
        latents = pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, size, size, num_frames,
                                       torch.float32, self.device, generator)
        spatial, temporal = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        extras = {"shape": {"num_frames": (num_frames - 1) // temporal + 1, "height": size // spatial,
                            "width": size // spatial},
                  "rope_interpolation_scale": (temporal / FRAME_RATE, spatial, spatial)}
        return latents, extras

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        config = scheduler.config
        # The packed sequence times the patch volume: latent frames x height x width, as the pipeline counts it.
        patch = self.denoiser.config
        length = latents.shape[1] * patch.patch_size_t * patch.patch_size**2
        mu = calculate_shift(length, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        t5 = t5.to(self.denoiser.dtype)
        model_input = torch.cat([trajectory.latents] * 2).to(t5.dtype)
        prediction = self.denoiser(
            hidden_states=model_input, encoder_hidden_states=t5, timestep=t.expand(model_input.shape[0]),
            encoder_attention_mask=attention_mask.bool(), **trajectory.extras["shape"],
            rope_interpolation_scale=trajectory.extras["rope_interpolation_scale"], return_dict=False,
        )[0].float()
        return self.classifier_free_guidance(prediction, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
            cross_attention_dim=32, num_layers=1, caption_channels=tiny.T5_TINY_DIM,
        )
        torch.manual_seed(seed)
        # Spatial and temporal compression 4 (two scaling blocks), no timestep-conditioned decoding.
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False,
        )
        return {
            "transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 32, "width": 32, "num_frames": 9}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

        scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
        return {
            "transformer": build.real(build.empty(LTXVideoTransformer3DModel), 3),
            "vae": build.real(build.empty(AutoencoderKLLTXVideo), 1), "scheduler": scheduler,
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
        }
