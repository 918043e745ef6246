"""encoder-shrink: small drop-in students for the big text encoders of diffusers pipelines (FLUX, SD3, PixArt, ...)."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use (PEP 562), as diffusers' `_LazyModule` does, so
# `import encoder_shrink` and `encoder-shrink --help` do not import torch and diffusers.
_LAZY = {
    "check_compatible": "encoder_shrink.compat",
    "swap_text_encoder": "encoder_shrink.compat",
    "ShrunkLLMConfig": "encoder_shrink.configuration",
    "ShrunkT5Config": "encoder_shrink.configuration",
    "ShrunkUMT5Config": "encoder_shrink.configuration",
    "EncoderShrinkError": "encoder_shrink.errors",
    "export": "encoder_shrink.exporters.formats",
    "load_encoder": "encoder_shrink.exporters.formats",
    "ShrunkLLMEncoderModel": "encoder_shrink.llm_student",
    "load_pipeline": "encoder_shrink.loading",
    "adapter_for": "encoder_shrink.pipelines",
    "register_adapter": "encoder_shrink.pipelines",
    "registered_families": "encoder_shrink.pipelines",
    "load_recipe": "encoder_shrink.recipes",
    "EncoderShrinker": "encoder_shrink.shrinker",
    "ShrunkT5EncoderModel": "encoder_shrink.student",
    "ShrunkUMT5EncoderModel": "encoder_shrink.student",
    "load_student": "encoder_shrink.student",
    "WeightsError": "encoder_shrink.weights",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

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

if TYPE_CHECKING:
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
