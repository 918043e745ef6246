"""HiDream-I1 family: its T5 in `text_encoder_3` is what a student replaces; the two CLIPs and the Llama stay."""

from __future__ import annotations

import math
from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter
from encoder_shrink.pipelines.flux import FLUX_VAE_PARAMETERS, T5_XXL_PARAMETERS

_HIDREAM = "diffusers.pipelines.hidream_image.pipeline_hidream_image.HiDreamImagePipeline"
# meta-llama/Llama-3.1-8B-Instruct (LlamaForCausalLM): the published count.
LLAMA_31_8B_PARAMETERS = 8_030_261_248


@register_adapter
class HiDreamAdapter(PipelineAdapter):
    name = "hidream"
    pipeline_class = "HiDreamImagePipeline"
    denoiser_class = "HiDreamImageTransformer2DModel"
    encoder_slot = "text_encoder_3"
    tokenizer_slot = "tokenizer_3"
    # HiDreamImagePipeline.__call__'s default; T5 gets the tokenizer's mask, the transformer reads every position.
    max_sequence_length = 128
    uses_attention_mask = True
    conditioning_width_key = "caption_channels"  # [T5 width, Llama width]
    guidance = "cfg"
    # HiDream-ai/HiDream-I1-Full scheduler/scheduler_config.json (UniPC on flow predictions, shift 3).
    scheduler_config = {"flow_shift": 3.0, "prediction_type": "flow_prediction", "use_flow_sigmas": True}
    copied_from = (
        CopiedLogic(f"{_HIDREAM}.__call__", (
            "mu = calculate_shift(self.transformer.max_seq)",
            "if isinstance(self.scheduler, UniPCMultistepScheduler): "
            "self.scheduler.set_timesteps(num_inference_steps, device=timestep_device)",
            "prompt_embeds_llama3 = torch.cat([negative_prompt_embeds_llama3, prompt_embeds_llama3], dim=1)",
            "noise_pred = -noise_pred",
            "division = self.vae_scale_factor * 2",
            "S_max = (self.default_sample_size * self.vae_scale_factor) ** 2",
            "width, height = int(width * scale // division * division), int(height * scale // division * division)",
        )),
        CopiedLogic(f"{_HIDREAM}.encode_prompt", (
            "pooled_prompt_embeds = torch.cat([pooled_prompt_embeds_1, pooled_prompt_embeds_2], dim=-1)",
        )),
    )
    # HiDream-ai/HiDream-I1-Full: the sparse (MoE) DiT published as "17B", Llama-3.1-8B-Instruct, T5-XXL.
    synthetic = SyntheticSpec("HiDream-ai/HiDream-I1-Full", {
        "vae": FLUX_VAE_PARAMETERS, "text_encoder_3": T5_XXL_PARAMETERS, "text_encoder_4": LLAMA_31_8B_PARAMETERS,
    }, approximate={"transformer": "17B"})

    @property
    def conditioning_width(self) -> int:
        return int(self.pipe.transformer.config.caption_channels[0])

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        pipe, dtype = self.pipe, self.denoiser.dtype
        # Each encoder runs where it is (the teacher may have been offloaded to the CPU); the cache moves rows.
        t5 = pipe._get_t5_prompt_embeds(texts, max_sequence_length, self.teacher.device, dtype)
        pooled = torch.cat([
            pipe._get_clip_prompt_embeds(pipe.tokenizer, pipe.text_encoder, texts, max_sequence_length,
                                         pipe.text_encoder.device, dtype),
            pipe._get_clip_prompt_embeds(pipe.tokenizer_2, pipe.text_encoder_2, texts, max_sequence_length,
                                         pipe.text_encoder_2.device, dtype),
        ], dim=-1)
        # (layers, batch, tokens, width) from the pipeline; rows are per text, so batch first here.
        llama = pipe._get_llama3_prompt_embeds(texts, max_sequence_length, pipe.text_encoder_4.device, dtype)
        return {"t5": t5, "llama": llama.transpose(0, 1), "pooled": pooled}

    def prepare_latents(self, batch_size, resolution, generator):
        # HiDreamImagePipeline rescales every request to its default area (copied_from), keeping the aspect ratio.
        pipe = self.pipe
        division = pipe.vae_scale_factor * 2
        scale = math.sqrt((pipe.default_sample_size * pipe.vae_scale_factor) ** 2 / (resolution * resolution))
        size = int(resolution * scale // division * division)
        latents = pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, size, size, self.denoiser.dtype,
                                       self.device, generator)
        return latents, {}

    def timestep_kwargs(self, scheduler, num_inference_steps, latents):
        from diffusers import UniPCMultistepScheduler
        from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift

        if isinstance(scheduler, UniPCMultistepScheduler):
            return {}  # the pipeline calls set_timesteps(num_inference_steps) itself, which this is
        return {"mu": calculate_shift(self.denoiser.max_seq)}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        model_input = torch.cat([trajectory.latents] * 2)
        prediction = -self.denoiser(
            hidden_states=model_input,
            timesteps=t.expand(model_input.shape[0]),
            encoder_hidden_states_t5=t5.to(self.denoiser.dtype),
            encoder_hidden_states_llama3=rows["llama"].transpose(0, 1),
            pooled_embeds=rows["pooled"],
            return_dict=False,
        )[0]
        return self.classifier_free_guidance(prediction, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import HiDreamImageTransformer2DModel, UniPCMultistepScheduler
        from transformers import CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = HiDreamImageTransformer2DModel(
            patch_size=8, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=4, caption_channels=[tiny.T5_TINY_DIM, 16], text_emb_dim=2 * tiny.CLIP_TINY_DIM,
            num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(128, 128),
            llama_layers=(0, 1),
        ).eval()
        # HiDream's CLIPs read up to min(length, 218) tokens (Long-CLIP): 128 positions here.
        clip_config = tiny.tiny_clip_text_config(max_position_embeddings=cls.max_sequence_length)
        torch.manual_seed(seed + 1)
        clip_l, clip_g = (
            CLIPTextModelWithProjection(clip_config).eval(),
            CLIPTextModelWithProjection(clip_config).eval(),
        )
        llm_tokenizer = tiny.tiny_llm_tokenizer(cls.max_sequence_length)
        llama = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(llm_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )).eval()
        return {
            "transformer": transformer,
            "text_encoder": clip_l, "tokenizer": tiny.tiny_clip_tokenizer(cls.max_sequence_length),
            "text_encoder_2": clip_g, "tokenizer_2": tiny.tiny_clip_tokenizer(cls.max_sequence_length),
            "text_encoder_3": tiny.tiny_t5_encoder(seed=seed),
            "tokenizer_3": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "text_encoder_4": llama, "tokenizer_4": llm_tokenizer,
            "vae": tiny.tiny_vae(latent_channels=4),
            # HiDream-I1-Full samples with UniPC on flow predictions.
            "scheduler": UniPCMultistepScheduler(**cls.scheduler_config),
        }

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        return {"height": 32, "width": 32}

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import HiDreamImageTransformer2DModel, UniPCMultistepScheduler
        from transformers import LlamaConfig, LlamaForCausalLM

        transformer = build.empty(lambda: HiDreamImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32, attention_head_dim=128,
            num_attention_heads=20, caption_channels=[4096, 4096], text_emb_dim=2048, num_routed_experts=4,
            num_activated_experts=2, axes_dims_rope=(64, 32, 32), max_resolution=(128, 128),
            llama_layers=list(range(32)) + [31] * 16))
        llama = build.empty(lambda: LlamaForCausalLM(LlamaConfig(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
            tie_word_embeddings=False)))
        vae = build.vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
        # Long-CLIP L and G (248 positions), with their projections (the pooled vectors HiDream reads).
        clip_l = build.clip_text(768, 12, 12, 3072, 768, "quick_gelu", with_projection=True, positions=248)
        clip_g = build.clip_text(1280, 32, 20, 5120, 1280, "gelu", with_projection=True, positions=248)
        return {
            "scheduler": UniPCMultistepScheduler(**cls.scheduler_config), "vae": build.real(vae, 1),
            "text_encoder": build.real(clip_l, 2), "tokenizer": build.clip_tokenizer(248),
            "text_encoder_2": build.real(clip_g, 4), "tokenizer_2": build.clip_tokenizer(248),
            "text_encoder_3": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "tokenizer_3": build.t5_tokenizer(cls.max_sequence_length),
            "text_encoder_4": build.real(llama, 5), "tokenizer_4": build.llm_tokenizer(),
            "transformer": build.real(transformer, 3),
        }
