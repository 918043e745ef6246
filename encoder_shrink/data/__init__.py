"""Prompt data: registered prompt sources (CommonText generation, T2I-CompBench, caption files) mixed per stage."""

from encoder_shrink.data.commontext import generate_commontext, read_commontext
from encoder_shrink.data.mixing import PromptMixture, build_mixture
from encoder_shrink.data.readers import PromptFileError, read_captions, read_compbench
from encoder_shrink.data.sources import read_source, register_prompt_source, registered_prompt_sources

__all__ = [
    "PromptFileError",
    "PromptMixture",
    "build_mixture",
    "generate_commontext",
    "read_captions",
    "read_commontext",
    "read_compbench",
    "read_source",
    "register_prompt_source",
    "registered_prompt_sources",
]
