"""Lumina-Image 2.0: Gemma-2-2B in `text_encoder`, hidden_states[-2] behind a system prompt, 256 tokens, masked."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, register_adapter
from encoder_shrink.pipelines.llm import NEGATIVE, LLMAdapter

_LUMINA2 = "diffusers.pipelines.lumina2.pipeline_lumina2.Lumina2Pipeline"


@register_adapter
class Lumina2Adapter(LLMAdapter):
    name = "lumina2"
    pipeline_class = "Lumina2Pipeline"
    denoiser_class = "Lumina2Transformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # Lumina2Pipeline.__call__'s default: prompts behind its system prompt, negatives as they are, both padded to
    # 256 tokens; the mask goes into Gemma and to the denoiser.
    max_sequence_length = 256
    uses_attention_mask = True
    denoiser_positions = "tokens"
    conditioning_width_key = "cap_feat_dim"
    # CFG with the combined prediction rescaled to the conditional one's norm (`cfg_normalization=True`, the default).
    guidance = "cfg"
    hidden_state_layers = (-2,)
    template_words = ("You are an assistant designed to generate superior images with the degree of image text "
                      "alignment based on textual prompts or user Prompt Start")
    copied_from = (
        CopiedLogic(f"{_LUMINA2}.encode_prompt", (
            'prompt = [system_prompt + " <Prompt Start> " + p for p in prompt]',
            'negative_prompt = negative_prompt if negative_prompt is not None else ""',
        )),
        CopiedLogic(f"{_LUMINA2}._get_gemma_prompt_embeds", (
            'text_inputs = self.tokenizer(prompt, padding="max_length", max_length=max_sequence_length, '
            'truncation=True, return_tensors="pt",)',
            "prompt_embeds = prompt_embeds.hidden_states[-2]",
        )),
        CopiedLogic(f"{_LUMINA2}.__call__", (
            "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas",
            "image_seq_len = latents.shape[1]",
            "current_timestep = 1 - t / self.scheduler.config.num_train_timesteps",
            "noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)",
            "noise_pred = noise_pred * (cond_norm / noise_norm)",
            "noise_pred = -noise_pred",
        )),
    )

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        return [NEGATIVE + negative_prompt] * len(prompts) + list(prompts)

    def tokenize(self, texts, max_sequence_length):
        formatted = [text.removeprefix(NEGATIVE) if text.startswith(NEGATIVE)
                     else self.pipe.system_prompt + " <Prompt Start> " + text for text in texts]
        tokens = self.tokenizer(formatted, padding="max_length", max_length=max_sequence_length, truncation=True,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def prepare_latents(self, batch_size, resolution, generator):
        latents = self.pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, resolution, resolution,
                                            torch.float32, self.device, generator)
        return latents, {}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.lumina2.pipeline_lumina2 import calculate_shift

        config = scheduler.config
        # `latents.shape[1]` as the pipeline computes it (the channel count of unpacked latents).
        mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        timestep = (1 - t / self.pipe.scheduler.config.num_train_timesteps).expand(batch)

        def denoise(embeddings, mask):
            return self.denoiser(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeddings,
                                 encoder_attention_mask=mask, return_dict=False)[0]

        cond = denoise(t5[batch:], attention_mask[batch:])
        uncond = denoise(t5[:batch], attention_mask[:batch])
        return -self.norm_rescaled_guidance(cond, uncond, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Transformer2DModel
        from transformers import Gemma2Config, Gemma2Model

        tokenizer = cls.tiny_tokenizer(spaced_words=True)
        hidden = 16
        torch.manual_seed(seed)
        transformer = Lumina2Transformer2DModel(
            sample_size=4, patch_size=2, in_channels=4, hidden_size=8, num_layers=2, num_attention_heads=1,
            num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
            axes_dim_rope=[4, 2, 2], cap_feat_dim=hidden,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
            latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        )
        torch.manual_seed(seed)
        text_encoder = Gemma2Model(Gemma2Config(
            head_dim=8, hidden_size=hidden, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, sliding_window=2, attn_implementation="eager",
        )).eval()
        return {"transformer": transformer, "vae": vae.eval(), "scheduler": FlowMatchEulerDiscreteScheduler(),
                "text_encoder": text_encoder, "tokenizer": tokenizer}
