"""CogVideoX family: T5-XXL in `text_encoder` without a mask, every padded position read; frames before channels."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.cogview3plus import cogvideox_scheduler_step
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS

_COGVIDEOX = "diffusers.pipelines.cogvideo.pipeline_cogvideox.CogVideoXPipeline"


@register_adapter
class CogVideoXAdapter(PipelineAdapter):
    name = "cogvideox"
    pipeline_class = "CogVideoXPipeline"
    denoiser_class = "CogVideoXTransformer3DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # CogVideoXPipeline.__call__'s default (the transformer's max_text_seq_length); no mask anywhere.
    max_sequence_length = 226
    uses_attention_mask = False
    conditioning_width_key = "text_embed_dim"
    guidance = "cfg"
    default_num_frames = 49  # the published transformers' sample_frames, which __call__ falls back to
    copied_from = (
        CopiedLogic(f"{_COGVIDEOX}._get_t5_prompt_embeds", (
            "prompt_embeds = self.text_encoder(text_input_ids.to(device))[0]",
        )),
        CopiedLogic(f"{_COGVIDEOX}.__call__", (
            "additional_frames = patch_size_t - latent_frames % patch_size_t",
            "num_frames += additional_frames * self.vae_scale_factor_temporal",
            "if self.transformer.config.use_rotary_positional_embeddings",
            "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
            "noise_pred = noise_pred.float()",
            "latents = latents.to(prompt_embeds.dtype)",
        )),
    )
    # THUDM/CogVideoX-2b ("2B"; the 5b variant counts 5.57 B): diffusers' default transformer is its layout.
    synthetic = SyntheticSpec("THUDM/CogVideoX-2b", {"text_encoder": T5_XXL_PARAMETERS},
                              approximate={"transformer": "2B"})

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        t5 = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length,
                                             device=self.teacher.device)
        return {"t5": t5}

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        pipe, config = self.pipe, self.denoiser.config
        temporal = pipe.vae_scale_factor_temporal
        latent_frames = (num_frames - 1) // temporal + 1
        if config.patch_size_t is not None and latent_frames % config.patch_size_t:  # CogVideoX 1.5 pads frames
            num_frames += (config.patch_size_t - latent_frames % config.patch_size_t) * temporal
        size = self.checked_size(resolution, 8)  # CogVideoXPipeline.check_inputs
        latents = pipe.prepare_latents(batch_size, config.in_channels, num_frames, size, size, self.denoiser.dtype,
                                       self.device, generator)
        rotary = (pipe._prepare_rotary_positional_embeddings(size, size, latents.size(1), self.device)
                  if config.use_rotary_positional_embeddings else None)
        # eta=0.0 is the pipeline's default; the helper keeps only what this scheduler's step accepts.
        return latents, {"step_kwargs": pipe.prepare_extra_step_kwargs(generator, 0.0), "image_rotary_emb": rotary}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        model_input = trajectory.scheduler.scale_model_input(torch.cat([trajectory.latents] * 2), t)
        prediction = self.denoiser(
            hidden_states=model_input, encoder_hidden_states=t5.to(self.denoiser.dtype),
            timestep=t.expand(model_input.shape[0]), image_rotary_emb=trajectory.extras["image_rotary_emb"],
            return_dict=False,
        )[0].float()
        return self.classifier_free_guidance(prediction, guidance_scale)

    def step(self, trajectory, prediction, t) -> None:
        cogvideox_scheduler_step(trajectory, prediction, t)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
            text_embed_dim=tiny.T5_TINY_DIM, num_layers=1, sample_width=2, sample_height=2, sample_frames=9,
            patch_size=2, temporal_compression_ratio=4, max_text_seq_length=cls.max_sequence_length,
            use_rotary_positional_embeddings=True,  # as CogVideoX-5b (rotary needs head_dim a multiple of 16)
        )
        torch.manual_seed(seed)
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        )
        return {
            "transformer": transformer, "vae": vae,
            # The published checkpoints' DDIM (v-prediction, zero terminal SNR).
            "scheduler": CogVideoXDDIMScheduler(),
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 16, "width": 16, "num_frames": 5}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

        return {
            "transformer": build.real(build.empty(CogVideoXTransformer3DModel), 3),
            "vae": build.real(build.empty(AutoencoderKLCogVideoX), 1), "scheduler": CogVideoXDDIMScheduler(),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
        }
