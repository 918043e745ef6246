"""CogView3-Plus family: T5 in `text_encoder` without a mask; no negative prompt means zero unconditional rows."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import T5_XXL_PARAMETERS

_COGVIEW = "diffusers.pipelines.cogview3.pipeline_cogview3plus.CogView3PlusPipeline"


def cogvideox_scheduler_step(trajectory, prediction: torch.Tensor, t: torch.Tensor) -> None:
    """The CogVideoX/CogView3 pipelines' step: DPM-solver++ also takes the previous x0 and timestep; dtype kept."""
    from diffusers import CogVideoXDPMScheduler

    scheduler, dtype = trajectory.scheduler, trajectory.latents.dtype
    if isinstance(scheduler, CogVideoXDPMScheduler):
        i = int((trajectory.timesteps == t).nonzero()[0])
        previous = trajectory.timesteps[i - 1] if i > 0 else None
        latents, trajectory.extras["old_pred"] = scheduler.step(
            prediction, trajectory.extras.get("old_pred"), t, previous, trajectory.latents,
            **trajectory.extras["step_kwargs"], return_dict=False)
    else:
        latents = scheduler.step(prediction, t, trajectory.latents, **trajectory.extras["step_kwargs"],
                                 return_dict=False)[0]
    trajectory.latents = latents.to(dtype)


@register_adapter
class CogView3PlusAdapter(PipelineAdapter):
    name = "cogview3plus"
    pipeline_class = "CogView3PlusPipeline"
    denoiser_class = "CogView3PlusTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # CogView3PlusPipeline.__call__'s default; T5 runs without a mask on max-length padding.
    max_sequence_length = 224
    uses_attention_mask = False
    conditioning_width_key = "text_embed_dim"
    guidance = "cfg"
    copied_from = (
        CopiedLogic(f"{_COGVIEW}.encode_prompt", (
            "if do_classifier_free_guidance and negative_prompt is None: "
            "negative_prompt_embeds = prompt_embeds.new_zeros(prompt_embeds.shape)",
        )),
        CopiedLogic(f"{_COGVIEW}.__call__", (
            "original_size = original_size or (height, width)",
            "target_size = (height, width)",
            "latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)",
            "noise_pred = noise_pred.float()",
            "latents = latents.to(prompt_embeds.dtype)",
        )),
    )
    # THUDM/CogView3-Plus-3B ("3B"): the transformer, a 16-channel VAE and T5-XXL.
    synthetic = SyntheticSpec("THUDM/CogView3-Plus-3B", {"text_encoder": T5_XXL_PARAMETERS},
                              approximate={"transformer": "3B"})

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        # Without a negative prompt the pipeline's unconditional embeddings are zeros: nothing for T5 to encode.
        return list(prompts) if not negative_prompt else [negative_prompt] * len(prompts) + list(prompts)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        t5 = self.pipe._get_t5_prompt_embeds(texts, max_sequence_length=max_sequence_length,
                                             device=self.teacher.device)
        return {"t5": t5}

    def prepare_latents(self, batch_size, resolution, generator):
        latents, extras = super().prepare_latents(batch_size, resolution, generator)
        # eta=0.0 is the pipeline's default; the helper keeps only what this scheduler's step accepts.
        extras["step_kwargs"] = self.pipe.prepare_extra_step_kwargs(generator, 0.0)
        # Micro-conditions as the pipeline builds them by default (CFG doubles the batch).
        size = torch.tensor([[resolution, resolution]] * 2 * batch_size, dtype=self.denoiser.dtype, device=self.device)
        extras["conditions"] = {"original_size": size, "target_size": size, "crop_coords": torch.zeros_like(size)}
        return latents, extras

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        t5 = t5.to(self.denoiser.dtype)
        if t5.shape[0] == trajectory.latents.shape[0]:  # no negative prompt: zero unconditional embeddings
            t5 = torch.cat([torch.zeros_like(t5), t5])
        model_input = trajectory.scheduler.scale_model_input(torch.cat([trajectory.latents] * 2), t)
        prediction = self.denoiser(
            hidden_states=model_input, encoder_hidden_states=t5, timestep=t.expand(model_input.shape[0]),
            return_dict=False, **trajectory.extras["conditions"],
        )[0].float()
        return self.classifier_free_guidance(prediction, guidance_scale)

    def step(self, trajectory, prediction, t) -> None:
        cogvideox_scheduler_step(trajectory, prediction, t)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import CogVideoXDDIMScheduler, CogView3PlusTransformer2DModel

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = CogView3PlusTransformer2DModel(
            patch_size=2, in_channels=4, num_layers=1, attention_head_dim=4, num_attention_heads=2, out_channels=4,
            text_embed_dim=tiny.T5_TINY_DIM, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8,
            sample_size=8,
        )
        return {
            "transformer": transformer,
            "text_encoder": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "vae": tiny.tiny_vae(latent_channels=4, block_out_channels=(8, 8)),
            # The DDIM scheduler of the CogVideoX/CogView3 family (v-prediction, zero terminal SNR).
            "scheduler": CogVideoXDDIMScheduler(),
        }

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import CogVideoXDDIMScheduler, CogView3PlusTransformer2DModel

        transformer = build.empty(lambda: CogView3PlusTransformer2DModel(
            patch_size=2, in_channels=16, num_layers=30, attention_head_dim=40, num_attention_heads=64,
            out_channels=16, text_embed_dim=4096, time_embed_dim=512, condition_dim=256, pos_embed_max_size=128,
            sample_size=128))
        return {
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "vae": build.real(build.vae(16, scaling_factor=1.0), 1), "transformer": build.real(transformer, 3),
            "scheduler": CogVideoXDDIMScheduler(),
        }
