"""FLUX.1 adapters: dev (guidance-distilled, 512 tokens) and schnell (no guidance embedding, 256 tokens)."""

from __future__ import annotations

from typing import Any

from encoder_shrink.pipelines.base import PipelineAdapter, register_adapter


class _FluxAdapter(PipelineAdapter):
    denoiser_class = "FluxTransformer2DModel"
    encoder_slot = "text_encoder_2"
    tokenizer_slot = "tokenizer_2"
    # FluxPipeline calls T5 on inputs padded to max length and passes no attention mask.
    uses_attention_mask = False
    conditioning_width_key = "joint_attention_dim"
    guidance_embeds: bool

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return super().matches(pipe) and bool(pipe.transformer.config.guidance_embeds) == cls.guidance_embeds


@register_adapter
class FluxDevAdapter(_FluxAdapter):
    name = "flux-dev"
    guidance_embeds = True
    # FluxPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 512


@register_adapter
class FluxSchnellAdapter(_FluxAdapter):
    name = "flux-schnell"
    guidance_embeds = False
    # FLUX.1-schnell was trained with 256 T5 tokens (its model card calls the pipeline with max_sequence_length=256).
    max_sequence_length = 256
