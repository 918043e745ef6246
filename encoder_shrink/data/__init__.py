"""Prompt data: CommonText generation, T2I-CompBench and caption readers, and their mixing per recipe stage."""

from encoder_shrink.data.commontext import generate_commontext, read_commontext
from encoder_shrink.data.mixing import PromptMixture, build_mixture
from encoder_shrink.data.readers import PromptFileError, read_captions, read_compbench

__all__ = [
    "PromptFileError",
    "PromptMixture",
    "build_mixture",
    "generate_commontext",
    "read_captions",
    "read_commontext",
    "read_compbench",
]
