"""Stable Diffusion 3 / 3.5 adapter: T5 in `text_encoder_3`, concatenated with CLIP-L/G along the sequence."""

from __future__ import annotations

from encoder_shrink.pipelines.base import PipelineAdapter, register_adapter


@register_adapter
class SD3Adapter(PipelineAdapter):
    name = "sd3"
    denoiser_class = "SD3Transformer2DModel"
    encoder_slot = "text_encoder_3"
    tokenizer_slot = "tokenizer_3"
    # StableDiffusion3Pipeline.__call__'s default max_sequence_length; no attention mask reaches T5.
    max_sequence_length = 256
    uses_attention_mask = False
    conditioning_width_key = "joint_attention_dim"
