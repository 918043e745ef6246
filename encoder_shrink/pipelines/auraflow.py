"""AuraFlow family: Pile-T5-XL (a UMT5 encoder) in `text_encoder`, called with the mask, its padding zeroed."""

from __future__ import annotations

from typing import Any

import torch

from encoder_shrink.pipelines.base import CopiedLogic, PipelineAdapter, SyntheticSpec, register_adapter

_AURA = "diffusers.pipelines.aura_flow.pipeline_aura_flow.AuraFlowPipeline"


@register_adapter
class AuraFlowAdapter(PipelineAdapter):
    name = "auraflow"
    pipeline_class = "AuraFlowPipeline"
    denoiser_class = "AuraFlowTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    student_kind = "umt5"
    # AuraFlowPipeline.__call__'s default. The mask goes into the encoder and multiplies its output: the denoiser gets
    # zeros at the padding (no mask of its own), so only the real tokens' embeddings matter.
    max_sequence_length = 256
    uses_attention_mask = True
    denoiser_positions = "tokens"
    conditioning_width_key = "joint_attention_dim"
    guidance = "cfg"
    copied_from = (
        CopiedLogic(f"{_AURA}.encode_prompt", (
            "prompt_embeds = self.text_encoder(**text_inputs)[0]",
            "prompt_embeds = prompt_embeds * prompt_attention_mask",
            'negative_prompt = negative_prompt or ""',
        )),
        CopiedLogic(f"{_AURA}.__call__", (
            "prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)",
            "timestep = torch.tensor([t / 1000]).expand(latent_model_input.shape[0])",
            "timestep = timestep.to(latents.device, dtype=latents.dtype)",
            "noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)",
        )),
    )
    # fal/AuraFlow (v0.1, "6.8B"): the MMDiT and EleutherAI/pile-t5-xl's encoder; the student keeps Pile-T5's
    # tokenizer. Later versions only enlarge the position-embedding table for higher resolutions.
    synthetic = SyntheticSpec("fal/AuraFlow", {}, teacher="pile-t5-xl", student="pile-t5-base",
                              approximate={"transformer": "6.8B"})

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenize(texts, max_sequence_length)
        device = self.teacher.device
        t5 = self.teacher(input_ids=ids.to(device), attention_mask=mask.to(device))[0]
        return {"t5": t5 * mask.to(device)[..., None]}

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        latents = trajectory.latents
        # What the pipeline hands the denoiser: embeddings multiplied by the tokenizer mask, negatives first.
        t5 = (t5 * attention_mask[..., None].to(t5.dtype)).to(self.denoiser.dtype)
        model_input = torch.cat([latents] * 2)
        # AuraFlow's denoiser takes t in [0, 1] (copied_from).
        timestep = torch.tensor([t / 1000]).expand(model_input.shape[0]).to(latents.device, dtype=latents.dtype)
        prediction = self.denoiser(model_input, encoder_hidden_states=t5, timestep=timestep, return_dict=False)[0]
        return self.classifier_free_guidance(prediction, guidance_scale)

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        from diffusers import AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

        from encoder_shrink import tiny

        torch.manual_seed(seed)
        transformer = AuraFlowTransformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=tiny.T5_TINY_DIM, out_channels=4, pos_embed_max_size=64,
        )
        # The text reaches the image tokens through two adaLN gates in a row (attention, then feed-forward), each
        # ~0.03 at diffusers' init of a 32-wide model: the prompt would move the prediction by 1e-10 (relative MSE).
        # Scaling the modulation weights 30x makes it 3e-3, as large as in the other tiny families.
        with torch.no_grad():
            for name, parameter in transformer.named_parameters():
                if ".norm1" in name and name.endswith("linear.weight"):
                    parameter.mul_(30.0)
        return {
            "transformer": transformer,
            "text_encoder": tiny.tiny_umt5_encoder(seed=seed),
            "tokenizer": tiny.tiny_t5_tokenizer(cls.max_sequence_length),
            "vae": tiny.tiny_vae(latent_channels=4),
            "scheduler": FlowMatchEulerDiscreteScheduler(),
        }

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        from diffusers import AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

        # fal/AuraFlow transformer/config.json (diffusers' defaults were taken from it)
        transformer = build.empty(lambda: AuraFlowTransformer2DModel(
            sample_size=64, patch_size=2, in_channels=4, num_mmdit_layers=4, num_single_dit_layers=32,
            attention_head_dim=256, num_attention_heads=12, joint_attention_dim=2048, caption_projection_dim=3072,
            out_channels=4, pos_embed_max_size=1024))
        return {
            "tokenizer": build.t5_tokenizer(cls.max_sequence_length),
            "text_encoder": text_encoder if text_encoder is not None else build.t5(cls.synthetic.teacher),
            "vae": build.real(build.vae(4, scaling_factor=0.13025), 1), "transformer": build.real(transformer, 3),
            "scheduler": FlowMatchEulerDiscreteScheduler(),
        }
