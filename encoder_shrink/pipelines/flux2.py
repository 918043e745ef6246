"""FLUX.2 [dev]: Mistral-Small-3.x in `text_encoder`, hidden states 10, 20 and 30 side by side (15360-d)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.llm import LLMAdapter

_FLUX2 = "diffusers.pipelines.flux2.pipeline_flux2.Flux2Pipeline"
# A Mistral-Small-3.x chat template: system prompt and user turn, content as a string or a list of text parts.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)


@register_adapter
class Flux2Adapter(LLMAdapter):
    name = "flux2"
    pipeline_class = "Flux2Pipeline"
    denoiser_class = "Flux2Transformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # Flux2Pipeline pads the chat-formatted prompt to 512 tokens, passes the mask to Mistral, and hands the denoiser
    # every position (no mask): padding positions are conditioning too.
    max_sequence_length = 512
    uses_attention_mask = True
    conditioning_width_key = "joint_attention_dim"
    guidance = "embedded"
    hidden_state_layers = (10, 20, 30)
    template_words = ("You are an AI that reasons about image descriptions give structured responses focusing "
                      "object relationships attribution actions without speculation SYSTEM PROMPT INST")
    copied_from = (
        CopiedLogic(f"{_FLUX2}._get_mistral_3_small_prompt_embeds", (
            "messages_batch = format_input(prompts=prompt, system_message=system_message)",
            'inputs = tokenizer.apply_chat_template(messages_batch, add_generation_prompt=False, tokenize=True, '
            'return_dict=True, return_tensors="pt", padding="max_length", truncation=True, '
            "max_length=max_sequence_length,)",
            "out = torch.stack([output.hidden_states[k] for k in hidden_states_layers], dim=1)",
            "prompt_embeds = out.permute(0, 2, 1, 3).reshape(batch_size, seq_len, num_channels * hidden_dim)",
        )),
        CopiedLogic(f"{_FLUX2}.__call__", (
            "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas",
            "mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_inference_steps)",
            "guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)",
            "timestep = t.expand(latents.shape[0]).to(latents.dtype)",
            "timestep=timestep / 1000,",
            "noise_pred = noise_pred[:, : latents.size(1) :]",
        )),
    )

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        # FLUX.2 [klein] shares the transformer class but reads other layers of a Qwen3.
        return super().matches(pipe) and type(pipe).__name__ == cls.pipeline_class

    def tokenize(self, texts, max_sequence_length):
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        inputs = self.tokenizer.apply_chat_template(
            format_input(prompts=list(texts), system_message=self.pipe.system_message),
            add_generation_prompt=False, tokenize=True, return_dict=True, return_tensors="pt",
            padding="max_length", truncation=True, max_length=max_sequence_length,
        )
        return inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)

    def prepare_latents(self, batch_size, resolution, generator):
        latents, latent_ids = self.pipe.prepare_latents(
            batch_size, self.denoiser.config.in_channels // 4, resolution, resolution, torch.float32, self.device,
            generator,
        )
        return latents, {"latent_ids": latent_ids}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        return {"sigmas": sigmas, "mu": compute_empirical_mu(latents.shape[1], num_inference_steps)}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        guidance = torch.full([1], float(guidance_scale), device=latents.device, dtype=torch.float32).expand(batch)
        prediction = self.denoiser(
            hidden_states=latents.to(self.denoiser.dtype),
            timestep=t.expand(batch).to(latents.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=t5,
            txt_ids=self.pipe._prepare_text_ids(t5).to(latents.device),
            img_ids=trajectory.extras["latent_ids"],
            return_dict=False,
        )[0]
        return prediction[:, : latents.size(1)]

    # black-forest-labs/FLUX.2-dev: the 32B transformer (diffusers' Flux2Transformer2DModel defaults are its config)
    # and Mistral-Small-3.1-24B (its text model, vision tower and projector), both published rounded.
    synthetic = SyntheticSpec("black-forest-labs/FLUX.2-dev", {}, teacher="mistral-small-3.1-24b",
                              student="t5-base", approximate={"transformer": "32B", "text_encoder": "24B"},
                              unpublished=("vae",))

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        if text_encoder is None:
            # mistralai/Mistral-Small-3.1-24B-Instruct-2503 config.json
            config = Mistral3Config(
                text_config={
                    "model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768,
                    "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 1e9,
                    "sliding_window": None, "tie_word_embeddings": False,
                },
                vision_config={
                    "model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "head_dim": 64, "image_size": 1540, "patch_size": 14,
                    "num_channels": 3, "rope_theta": 10000.0,
                },
                image_token_index=10, spatial_merge_size=2, multimodal_projector_bias=False,
                projector_hidden_act="gelu", vision_feature_layer=-1, tie_word_embeddings=False,
            )
            text_encoder = build.real(build.empty(lambda: Mistral3ForConditionalGeneration(config)), 2)
        transformer = build.empty(lambda: Flux2Transformer2DModel())
        vae = build.empty(lambda: AutoencoderKLFlux2())
        return {"scheduler": FlowMatchEulerDiscreteScheduler(), "vae": build.real(vae, 1),
                "text_encoder": text_encoder, "tokenizer": build.llm_tokenizer(cls.max_sequence_length,
                                                                               MISTRAL_CHAT_TEMPLATE),
                "transformer": build.real(transformer, 3)}

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        tokenizer = cls.tiny_tokenizer(MISTRAL_CHAT_TEMPLATE)
        hidden = 16
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=3 * hidden, timestep_guidance_channels=256,
            axes_dims_rope=(4, 4, 4, 4),
        )
        # 30 layers, so the pipeline's default hidden_states[10], [20], [30] exist (the last is the final norm's).
        config = Mistral3Config(
            text_config={
                "model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": hidden,
                "intermediate_size": 32, "max_position_embeddings": 2048, "num_attention_heads": 4,
                "num_hidden_layers": 30, "num_key_value_heads": 2, "head_dim": 4, "rms_norm_eps": 1e-5,
                "rope_theta": 1e9, "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            },
            vision_config={
                "model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                "intermediate_size": 32, "image_size": 30, "patch_size": 6, "num_channels": 3,
            },
            bos_token_id=1, eos_token_id=2, pad_token_id=0, image_token_index=3,
        )
        torch.manual_seed(seed)
        text_encoder = Mistral3ForConditionalGeneration(config).eval()
        torch.manual_seed(seed)
        vae = AutoencoderKLFlux2(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
            norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        )
        return {"scheduler": FlowMatchEulerDiscreteScheduler(), "vae": vae, "text_encoder": text_encoder,
                "tokenizer": tokenizer, "transformer": transformer}
