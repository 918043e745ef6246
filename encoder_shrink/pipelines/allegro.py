"""Allegro family: T5-XXL in `text_encoder`, called with the mask, which the denoiser applies too; 5-D latents."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS
from encoder_shrink.pipelines.pixart import preprocess_captions

_ALLEGRO = "diffusers.pipelines.allegro.pipeline_allegro.AllegroPipeline"


@register_adapter
class AllegroAdapter(PipelineAdapter):
    name = "allegro"
    pipeline_class = "AllegroPipeline"
    denoiser_class = "AllegroTransformer3DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # AllegroPipeline.__call__'s default (PixArt's prompt code): the mask goes into T5 and into the denoiser.
    max_sequence_length = 512
    uses_attention_mask = True
    denoiser_positions = "tokens"
    conditioning_width_key = "caption_channels"
    guidance = "cfg"
    default_num_frames = 88  # the transformer's sample_frames (22) times the VAE's temporal compression (4)
    copied_from = (
        CopiedLogic(f"{_ALLEGRO}.encode_prompt", (
            "prompt = self._text_preprocessing(prompt, clean_caption=clean_caption)",
            "prompt_embeds = self.text_encoder(text_input_ids.to(device), attention_mask=prompt_attention_mask)",
        )),
        CopiedLogic(f"{_ALLEGRO}.__call__", (
            "prompt_embeds = prompt_embeds.unsqueeze(1)  # b l d -> b 1 l d",
            "image_rotary_emb = self._prepare_rotary_positional_embeddings(batch_size, height, width, "
            "latents.size(2), device)",
            "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
            "timestep = t.expand(latent_model_input.shape[0])",
            "latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]",
        )),
    )
    # rhymes-ai/Allegro ("2.8B" DiT): diffusers' default transformer and VAE are its layout.
    synthetic = SyntheticSpec("rhymes-ai/Allegro", {"text_encoder": T5_XXL_PARAMETERS},
                              approximate={"transformer": "2.8B"})

    def prepare_for_sampling(self) -> None:
        # AutoencoderKLAllegro raises "Decoding without tiling has not been implemented yet" otherwise; diffusers'
        # Allegro documentation enables tiling right after loading.
        self.pipe.vae.enable_tiling()

    def tokenize(self, texts, max_sequence_length):
        return super().tokenize(preprocess_captions(self.pipe, texts), max_sequence_length)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenize(texts, max_sequence_length)
        device = self.teacher.device
        return {"t5": self.teacher(ids.to(device), attention_mask=mask.to(device))[0]}

    def prepare_latents(self, batch_size, resolution, generator, num_frames=None):
        pipe = self.pipe
        size = self.checked_size(resolution, 8)  # AllegroPipeline.check_inputs
        latents = pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, num_frames, size, size,
                                       self.denoiser.dtype, self.device, generator)
        rotary = pipe._prepare_rotary_positional_embeddings(batch_size, size, size, latents.size(2), self.device)
        # eta=0.0 is the pipeline's default; the helper keeps only what this scheduler's step accepts.
        return latents, {"step_kwargs": pipe.prepare_extra_step_kwargs(generator, 0.0), "image_rotary_emb": rotary}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        model_input = trajectory.scheduler.scale_model_input(torch.cat([trajectory.latents] * 2), t)
        prediction = self.denoiser(
            hidden_states=model_input, encoder_hidden_states=t5.to(self.denoiser.dtype).unsqueeze(1),
            encoder_attention_mask=attention_mask, timestep=t.expand(model_input.shape[0]),
            image_rotary_emb=trajectory.extras["image_rotary_emb"], return_dict=False,
        )[0]
        return self.classifier_free_guidance(prediction, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AllegroTransformer3DModel, AutoencoderKLAllegro, EulerAncestralDiscreteScheduler

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = AllegroTransformer3DModel(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=1,
            cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8,
            caption_channels=tiny.T5_TINY_DIM,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKLAllegro(
            in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
            up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        )
        return {
            "transformer": transformer, "vae": vae,
            # rhymes-ai/Allegro samples with Euler-ancestral (it draws noise at every step from the generator).
            "scheduler": EulerAncestralDiscreteScheduler(),
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        # AutoencoderKLAllegro decodes in tiles of 24 frames x 320 px (its `kernel`): a tiny video decodes to zeros,
        # so the tiny pipeline returns its latents, which is where the encoder's effect shows.
        return {"height": 16, "width": 16, "num_frames": 8, "output_type": "latent"}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AllegroTransformer3DModel, AutoencoderKLAllegro, EulerAncestralDiscreteScheduler

        return {
            "transformer": build.real(build.empty(AllegroTransformer3DModel), 3),
            "vae": build.real(build.empty(AutoencoderKLAllegro), 1), "scheduler": EulerAncestralDiscreteScheduler(),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
        }
