"""Pipeline families encoder-shrink supports: one adapter per family, registered next to its definition."""

from encoder_shrink.pipelines.base import (
    PipelineAdapter,
    adapter_for,
    get_adapter,
    register_adapter,
    registered_families,
)
from encoder_shrink.pipelines.flux import FluxDevAdapter, FluxSchnellAdapter
from encoder_shrink.pipelines.pixart import PixArtAlphaAdapter, PixArtSigmaAdapter
from encoder_shrink.pipelines.sd3 import SD3Adapter

__all__ = [
    "FluxDevAdapter",
    "FluxSchnellAdapter",
    "PipelineAdapter",
    "PixArtAlphaAdapter",
    "PixArtSigmaAdapter",
    "SD3Adapter",
    "adapter_for",
    "get_adapter",
    "register_adapter",
    "registered_families",
]
