"""Qwen-Image: Qwen2.5-VL-7B in `text_encoder`, its last layer without the 34 template tokens, masked, true CFG."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoder_shrink.pipelines.base import CopiedLogic, register_adapter
from encoder_shrink.pipelines.llm import LLMAdapter

_QWEN = "diffusers.pipelines.qwenimage.pipeline_qwenimage.QwenImagePipeline"


@register_adapter
class QwenImageAdapter(LLMAdapter):
    name = "qwenimage"
    pipeline_class = "QwenImagePipeline"
    denoiser_class = "QwenImageTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # QwenImagePipeline.__call__'s default: the prompt's tokens kept after the template is dropped. The encoder sees
    # the template too (`encoded_length`), with the mask; the denoiser reads the real tokens only, through its mask.
    max_sequence_length = 512
    uses_attention_mask = True
    fixed_call_length = False  # the pipeline pads each batch to its longest prompt
    denoiser_positions = "tokens"
    conditioning_width_key = "joint_attention_dim"
    # True CFG over a negative prompt (`true_cfg_scale`), with the combined prediction rescaled to the conditional
    # one's norm.
    guidance = "cfg"
    hidden_state_layers = (-1,)
    template_words = ("Describe the image by detailing color shape size texture quantity text spatial relationships "
                      "objects background system user assistant Describe")
    copied_from = (
        CopiedLogic(f"{_QWEN}._get_qwen_prompt_embeds", (
            "txt = [template.format(e) for e in prompt]",
            "txt, max_length=self.tokenizer_max_length + drop_idx, padding=True, truncation=True, "
            'return_tensors="pt"',
            "hidden_states = encoder_hidden_states.hidden_states[-1]",
            "split_hidden_states = self._extract_masked_hidden(hidden_states, txt_tokens.attention_mask)",
            "split_hidden_states = [e[drop_idx:] for e in split_hidden_states]",
            "[torch.cat([u, u.new_zeros(max_seq_len - u.size(0), u.size(1))]) for u in split_hidden_states]",
        )),
        CopiedLogic(f"{_QWEN}.encode_prompt", (
            "prompt_embeds = prompt_embeds[:, :max_sequence_length]",
            "if prompt_embeds_mask.all(): prompt_embeds_mask = None",
        )),
        CopiedLogic(f"{_QWEN}.__call__", (
            "img_shapes = [[(1, height // self.vae_scale_factor // 2, width // self.vae_scale_factor // 2)]] * "
            "batch_size",
            "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas",
            "timestep=timestep / 1000,",
            "comb_pred = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)",
            "noise_pred = comb_pred * (cond_norm / noise_norm)",
        )),
    )

    @classmethod
    def guidance_call_kwargs(cls, guidance_scale: float) -> dict[str, Any]:
        # CFG runs only with a negative prompt, at `true_cfg_scale`; `guidance_scale` is for guidance-distilled models.
        return {"true_cfg_scale": guidance_scale, "negative_prompt": ""}

    def encoded_length(self, max_sequence_length: int) -> int:
        return max_sequence_length + self.pipe.prompt_template_encode_start_idx

    def tokenize(self, texts, max_sequence_length):
        # The pipeline pads to the batch's longest prompt; a fixed length gives the same features on the real tokens
        # (the mask goes in), and the positions past them are dropped in `predict` as the pipeline drops them.
        template = self.pipe.prompt_template_encode
        tokens = self.tokenizer([template.format(text) for text in texts], padding="max_length",
                                max_length=self.encoded_length(max_sequence_length), truncation=True,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def conditioning(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt embeddings and mask the pipeline hands its denoiser (copied_from `_get_qwen_prompt_embeds`)."""
        drop = self.pipe.prompt_template_encode_start_idx
        split = [e[drop:] for e in self.pipe._extract_masked_hidden(features, mask)]
        longest = max(e.size(0) for e in split)
        embeds = torch.stack([torch.cat([u, u.new_zeros(longest - u.size(0), u.size(1))]) for u in split])
        embeds_mask = torch.stack([torch.cat([torch.ones(u.size(0), dtype=torch.long, device=u.device),
                                              torch.zeros(longest - u.size(0), dtype=torch.long, device=u.device)])
                                   for u in split])
        embeds, embeds_mask = embeds[:, : self.max_sequence_length], embeds_mask[:, : self.max_sequence_length]
        return embeds, (None if embeds_mask.all() else embeds_mask)

    def prepare_latents(self, batch_size, resolution, generator):
        latents = self.pipe.prepare_latents(batch_size, self.denoiser.config.in_channels // 4, resolution, resolution,
                                            torch.float32, self.device, generator)
        size = resolution // self.pipe.vae_scale_factor // 2
        return latents, {"img_shapes": [[(1, size, size)]] * batch_size}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        config = scheduler.config
        mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        timestep = t.expand(batch).to(latents.dtype) / 1000

        def denoise(features, mask):
            embeds, embeds_mask = self.conditioning(features, mask)
            return self.denoiser(hidden_states=latents, timestep=timestep, guidance=None,
                                 encoder_hidden_states_mask=embeds_mask, encoder_hidden_states=embeds,
                                 img_shapes=trajectory.extras["img_shapes"], return_dict=False)[0]

        # Prompts are the second half of the rows, their negatives the first (`encoder_texts`).
        cond = denoise(t5[batch:], attention_mask[batch:])
        uncond = denoise(t5[:batch], attention_mask[:batch])
        return self.norm_rescaled_guidance(cond, uncond, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        # Qwen2's byte-level BPE: no BOS, words with their leading space, the chat markers whole. The system part
        # of the pipeline's template is then exactly the 34 tokens the pipeline drops, as with the real tokenizer.
        tokenizer = cls.tiny_tokenizer(spaced_words=True, special_tokens=("<|im_start|>", "<|im_end|>"),
                                       add_bos=False)
        hidden = 16
        torch.manual_seed(seed)
        # One block (diffusers' tests use two): at diffusers' init a second block dilutes the text's effect on the
        # prediction, and the learning test's 160 steps cut the error to 0.28x of its start instead of 0.14x.
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=3,
            joint_attention_dim=hidden, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        )
        torch.manual_seed(seed)
        vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                     temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                     latents_std=[1.0] * 4)
        config = Qwen2_5_VLConfig(
            text_config={
                "hidden_size": hidden, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "rope_theta": 1e6,
            },
            vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                           "out_hidden_size": hidden},
            hidden_size=hidden, vocab_size=len(tokenizer), vision_start_token_id=len(tokenizer) - 3,
            vision_end_token_id=len(tokenizer) - 2, vision_token_id=len(tokenizer) - 1,
        )
        torch.manual_seed(seed)
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
        return {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(),
                "text_encoder": text_encoder, "tokenizer": tokenizer}

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 32, "width": 32}
