"""PixArt-alpha and PixArt-sigma adapters: T5 in `text_encoder`, called with an attention mask."""

from __future__ import annotations

from typing import Any

from encoder_shrink.pipelines.base import PipelineAdapter, register_adapter


class _PixArtAdapter(PipelineAdapter):
    denoiser_class = "PixArtTransformer2DModel"
    encoder_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    uses_attention_mask = True
    conditioning_width_key = "caption_channels"
    sigma: bool

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        # Alpha and sigma share the denoiser class; the pipeline class tells them apart (PixArtSigmaPAGPipeline too).
        return super().matches(pipe) and ("Sigma" in type(pipe).__name__) == cls.sigma


@register_adapter
class PixArtAlphaAdapter(_PixArtAdapter):
    name = "pixart-alpha"
    sigma = False
    # PixArtAlphaPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 120


@register_adapter
class PixArtSigmaAdapter(_PixArtAdapter):
    name = "pixart-sigma"
    sigma = True
    # PixArtSigmaPipeline.__call__'s default max_sequence_length.
    max_sequence_length = 300
