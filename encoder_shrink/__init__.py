"""encoder-shrink: small drop-in students for the big text encoders of diffusers pipelines (FLUX, SD3, PixArt, ...)."""

from encoder_shrink.compat import check_compatible, swap_text_encoder
from encoder_shrink.configuration import ShrunkLLMConfig, ShrunkT5Config, ShrunkUMT5Config
from encoder_shrink.errors import EncoderShrinkError
from encoder_shrink.exporters.formats import export, load_encoder
from encoder_shrink.llm_student import ShrunkLLMEncoderModel
from encoder_shrink.loading import load_pipeline
from encoder_shrink.pipelines import adapter_for, register_adapter, registered_families
from encoder_shrink.recipes import load_recipe
from encoder_shrink.shrinker import EncoderShrinker
from encoder_shrink.student import ShrunkT5EncoderModel, ShrunkUMT5EncoderModel, load_student
from encoder_shrink.weights import WeightsError

__version__ = "0.1.0"

__all__ = [
    "EncoderShrinkError",
    "EncoderShrinker",
    "ShrunkLLMConfig",
    "ShrunkLLMEncoderModel",
    "ShrunkT5Config",
    "ShrunkT5EncoderModel",
    "ShrunkUMT5Config",
    "ShrunkUMT5EncoderModel",
    "WeightsError",
    "adapter_for",
    "check_compatible",
    "export",
    "load_encoder",
    "load_pipeline",
    "load_recipe",
    "load_student",
    "register_adapter",
    "registered_families",
    "swap_text_encoder",
]
