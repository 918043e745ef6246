"""Sana: Gemma-2-2B in `text_encoder`, its final normed output; prompts behind an instruction, BOS + last 299."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, register_adapter
from encoder_shrink.pipelines.llm import NEGATIVE, LLMAdapter

_SANA = "diffusers.pipelines.sana.pipeline_sana.SanaPipeline"


@register_adapter
class SanaAdapter(LLMAdapter):
    name = "sana"
    pipeline_class = "SanaPipeline"
    denoiser_class = "SanaTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # SanaPipeline's default: prompts are encoded behind its "complex human instruction" at instruction + 298 tokens,
    # of which the denoiser gets the BOS and the last 299 (300 in all); negatives are encoded plainly at 300.
    max_sequence_length = 300
    uses_attention_mask = True
    fixed_call_length = False  # prompts at instruction + 298 tokens, negatives at 300
    denoiser_positions = "tokens"
    conditioning_width_key = "caption_channels"
    guidance = "cfg"
    hidden_state_layers = (-1,)  # `prompt_embeds[0]`: the last hidden state, after Gemma's final norm
    copied_from = (
        CopiedLogic(f"{_SANA}._get_gemma_prompt_embeds", (
            'self.tokenizer.padding_side = "right"',
            "chi_prompt = \"\\n\".join(complex_human_instruction)",
            "prompt = [chi_prompt + p for p in prompt]",
            "num_chi_prompt_tokens = len(self.tokenizer.encode(chi_prompt))",
            "max_length_all = num_chi_prompt_tokens + max_sequence_length - 2",
            'text_inputs = self.tokenizer(prompt, padding="max_length", max_length=max_length_all, truncation=True, '
            'add_special_tokens=True, return_tensors="pt",)',
            "prompt_embeds = prompt_embeds[0].to(dtype=dtype, device=device)",
        )),
        CopiedLogic(f"{_SANA}.encode_prompt", (
            "select_index = [0] + list(range(-max_length + 1, 0))",
            "prompt_embeds = prompt_embeds[:, select_index]",
            "complex_human_instruction=False,",
        )),
        CopiedLogic(f"{_SANA}.__call__", (
            "prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)",
            "timestep = timestep * self.transformer.config.timestep_scale",
            "encoder_attention_mask=prompt_attention_mask,",
            "noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)",
            "if self.transformer.config.out_channels // 2 == latent_channels: "
            "noise_pred = noise_pred.chunk(2, dim=1)[0]",
        )),
    )

    @property
    def instruction(self) -> str:
        """The instruction SanaPipeline.__call__ puts before every prompt by default."""
        return "\n".join(inspect.signature(type(self.pipe).__call__).parameters["complex_human_instruction"].default)

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        return [NEGATIVE + negative_prompt] * len(prompts) + list(prompts)

    def encoded_length(self, max_sequence_length: int) -> int:
        return len(self.tokenizer.encode(self.instruction)) + max_sequence_length - 2

    def tokenize(self, texts, max_sequence_length):
        self.tokenizer.padding_side = "right"
        length = self.encoded_length(max_sequence_length)
        ids, masks = [], []
        for text in texts:  # copied_from: lower-cased and stripped, the instruction before prompts only
            negative = text.startswith(NEGATIVE)
            clean = self.pipe._text_preprocessing(text.removeprefix(NEGATIVE))[0]
            tokens = self.tokenizer(clean if negative else self.instruction + clean, padding="max_length",
                                    max_length=max_sequence_length if negative else length, truncation=True,
                                    add_special_tokens=True, return_tensors="pt")
            # A negative's ids padded on to the common length: Gemma is causal, so its features are unchanged.
            pad = length - tokens.input_ids.shape[1]
            ids.append(torch.nn.functional.pad(tokens.input_ids, (0, pad), value=self.tokenizer.pad_token_id))
            masks.append(torch.nn.functional.pad(tokens.attention_mask, (0, pad)))
        return torch.cat(ids).to(self.device), torch.cat(masks).to(self.device)

    def conditioning(self, features: torch.Tensor, mask: torch.Tensor, negative: bool):
        """The positions the pipeline hands its denoiser (L = max_sequence_length, 300 by default): a negative's first
        L, a prompt's BOS and last L - 1."""
        # L of this run, from the common encoded length (instruction + L - 2), not the family's default.
        length = features.shape[1] - self.encoded_length(0)
        if negative:
            return features[:, :length], mask[:, :length]
        offset = self.encoded_length(length) - length + 1
        select = [0, *range(offset, offset + length - 1)]
        return features[:, select], mask[:, select]

    def prepare_latents(self, batch_size, resolution, generator):
        latents = self.pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, resolution, resolution,
                                            torch.float32, self.device, generator)
        return latents, {"step_kwargs": self.pipe.prepare_extra_step_kwargs(generator, 0.0)}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        dtype = self.denoiser.dtype
        negatives = self.conditioning(t5[:batch], attention_mask[:batch], negative=True)
        prompts = self.conditioning(t5[batch:], attention_mask[batch:], negative=False)
        embeds, mask = torch.cat([negatives[0], prompts[0]]), torch.cat([negatives[1], prompts[1]])
        model_input = torch.cat([latents] * 2)
        timestep = t.expand(model_input.shape[0]) * self.denoiser.config.timestep_scale
        prediction = self.denoiser(model_input.to(dtype), encoder_hidden_states=embeds.to(dtype),
                                   encoder_attention_mask=mask, timestep=timestep, return_dict=False)[0].float()
        prediction = self.classifier_free_guidance(prediction, guidance_scale)
        if self.denoiser.config.out_channels // 2 == self.denoiser.config.in_channels:
            prediction = prediction.chunk(2, dim=1)[0]
        return prediction

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
        from transformers import Gemma2Config, Gemma2Model

        # The instruction's words whole, so the tiny instruction is ~200 tokens rather than ~1000 characters.
        call = inspect.signature(SanaPipeline.__call__)
        instruction = " ".join(call.parameters["complex_human_instruction"].default)
        words = "".join(c if c.isalpha() else " " for c in instruction).split()
        tokenizer = cls.tiny_tokenizer(spaced_words=True, extra_words=words)
        hidden = 16
        torch.manual_seed(seed)
        transformer = SanaTransformer2DModel(
            patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
            num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=hidden,
            sample_size=32,
        )
        torch.manual_seed(seed)
        vae = AutoencoderDC(
            in_channels=3, latent_channels=4, attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
            upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
            scaling_factor=0.41407,
        )
        torch.manual_seed(seed)
        text_encoder = Gemma2Model(Gemma2Config(
            head_dim=8, hidden_size=hidden, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, attn_implementation="eager",
        )).eval()
        return {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
                "text_encoder": text_encoder, "tokenizer": tokenizer}

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        # Resolution binning would snap 32 px to the nearest bin of the real model (512 px and up).
        return {"height": 32, "width": 32, "use_resolution_binning": False}
