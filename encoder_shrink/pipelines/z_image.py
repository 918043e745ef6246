"""Z-Image: Qwen3-4B in `text_encoder`, hidden_states[-2] of the chat-formatted prompt, real tokens only, CFG."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, register_adapter
from encoder_shrink.pipelines.llm import LLMAdapter

_ZIMAGE = "diffusers.pipelines.z_image.pipeline_z_image.ZImagePipeline"
# Qwen3's chat template for a user turn and the generation prompt (with thinking enabled, nothing is added after it).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@register_adapter
class ZImageAdapter(LLMAdapter):
    name = "z-image"
    pipeline_class = "ZImagePipeline"
    denoiser_class = "ZImageTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    # ZImagePipeline pads the chat-formatted prompt to 512 tokens, passes the mask to Qwen3, and hands its denoiser
    # the real tokens only (a list of unpadded embeddings).
    max_sequence_length = 512
    uses_attention_mask = True
    denoiser_positions = "tokens"
    conditioning_width_key = "cap_feat_dim"
    # CFG as Z-Image applies it: `pos + scale * (pos - neg)`, on whenever the scale is above 0.
    guidance = "cfg"
    hidden_state_layers = (-2,)
    template_words = "user assistant im start end"
    copied_from = (
        CopiedLogic(f"{_ZIMAGE}._encode_prompt", (
            "prompt_item = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, "
            "enable_thinking=True,)",
            'text_inputs = self.tokenizer(prompt, padding="max_length", max_length=max_sequence_length, '
            'truncation=True, return_tensors="pt",)',
            "prompt_masks = text_inputs.attention_mask.to(device).bool()",
            ").hidden_states[-2]",
            "embeddings_list.append(prompt_embeds[i][prompt_masks[i]])",
        )),
        CopiedLogic(f"{_ZIMAGE}.__call__", (
            "image_seq_len = (latents.shape[2] // 2) * (latents.shape[3] // 2)",
            "sigmas = get_default_z_image_sigmas(num_inference_steps)",
            "timestep = (1000 - timestep) / 1000",
            "prompt_embeds_model_input = prompt_embeds + negative_prompt_embeds",
            "pred = pos + current_guidance_scale * (pos - neg)",
            "noise_pred = -noise_pred",
        )),
    )

    def tokenize(self, texts, max_sequence_length):
        formatted = [self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                        add_generation_prompt=True, enable_thinking=True)
                     for text in texts]
        tokens = self.tokenizer(formatted, padding="max_length", max_length=max_sequence_length, truncation=True,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def prepare_latents(self, batch_size, resolution, generator):
        latents = self.pipe.prepare_latents(batch_size, self.denoiser.in_channels, resolution, resolution,
                                            torch.float32, self.device, generator)
        return latents, {}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

        config = scheduler.config
        mu = calculate_shift((latents.shape[2] // 2) * (latents.shape[3] // 2),
                             config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return {"sigmas": get_default_z_image_sigmas(num_inference_steps), "mu": mu}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        batch = latents.shape[0]
        dtype = self.denoiser.dtype
        # The real tokens of each row, unpadded, as the pipeline selects them: prompts, then their negatives.
        selected = [t5[i][attention_mask[i].bool()].to(dtype) for i in range(t5.shape[0])]
        embeddings = selected[batch:] + selected[:batch]
        timestep = ((1000 - t.expand(batch)) / 1000).repeat(2)
        inputs = list(latents.to(dtype).repeat(2, 1, 1, 1).unsqueeze(2).unbind(dim=0))
        outputs = self.denoiser(inputs, timestep, embeddings, return_dict=False)[0]
        pos, neg = torch.stack([o.float() for o in outputs[:batch]]), torch.stack([o.float() for o in outputs[batch:]])
        return -(pos + guidance_scale * (pos - neg)).squeeze(2)

    def step(self, trajectory, prediction, t) -> None:
        trajectory.latents = trajectory.scheduler.step(prediction.to(torch.float32), t, trajectory.latents,
                                                       return_dict=False)[0]

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
        from transformers import Qwen3Config, Qwen3Model

        # Qwen2's byte-level BPE as Qwen3 uses it: no BOS, words with their leading space, chat markers whole.
        tokenizer = cls.tiny_tokenizer(QWEN3_CHAT_TEMPLATE, spaced_words=True,
                                       special_tokens=("<|im_start|>", "<|im_end|>"), add_bos=False)
        hidden = 16
        torch.manual_seed(seed)
        # One main layer (diffusers' tests use two): with two, the text's effect on the prediction at diffusers' init
        # is diluted, and the learning test's 160 steps cut the error to 0.26x of its start instead of 0.19x.
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=hidden, rope_theta=256.0,
            t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[2048, 32, 32],
        )
        with torch.no_grad():  # created with torch.empty: fixed, so a saved tiny pipeline holds no garbage
            transformer.x_pad_token.fill_(1.0)
            transformer.cap_pad_token.fill_(1.0)
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[32, 64], layers_per_block=1,
            latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
        )
        torch.manual_seed(seed)
        text_encoder = Qwen3Model(Qwen3Config(
            hidden_size=hidden, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=2048,
        )).eval()
        return {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(),
                "text_encoder": text_encoder, "tokenizer": tokenizer}

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 32, "width": 32}
