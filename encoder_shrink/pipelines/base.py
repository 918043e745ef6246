"""PipelineAdapter: what encoder-shrink needs to know about one pipeline family, and the registry of families."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

_ADAPTERS: dict[str, type[PipelineAdapter]] = {}


class PipelineAdapter:
    r"""
    Describes one pipeline family: which slot holds the T5 teacher, its tokenizer, the padded length and mask the
    pipeline encodes prompts with, and the conditioning width its denoiser expects.

    Subclasses set the class attributes and are registered with [`register_adapter`] next to their definition. An
    instance wraps one pipeline: `adapter_for(pipe)` picks the family.

    Example:

    ```python
    >>> adapter = adapter_for(pipe)  # doctest: +SKIP
    >>> adapter.name, adapter.encoder_slot, adapter.max_sequence_length
    ('flux-dev', 'text_encoder_2', 512)
    ```
    """

    name: ClassVar[str]
    # Class name of the denoiser (`pipe.transformer`) that identifies the family, derivatives included.
    denoiser_class: ClassVar[str]
    encoder_slot: ClassVar[str]
    tokenizer_slot: ClassVar[str]
    # Padded prompt length the pipeline encodes at by default, and whether it passes an attention mask to T5.
    max_sequence_length: ClassVar[int]
    uses_attention_mask: ClassVar[bool]
    # Key of `pipe.transformer.config` holding the width of the text conditioning.
    conditioning_width_key: ClassVar[str]

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        """Whether `pipe` belongs to this family (subclasses narrow this further, e.g. FLUX-dev vs schnell)."""
        denoiser = getattr(pipe, "transformer", None)
        return type(denoiser).__name__ == cls.denoiser_class and hasattr(pipe, cls.encoder_slot)

    @property
    def teacher(self) -> Any:
        """The encoder in the T5 slot (a T5EncoderModel, or a student already swapped in)."""
        return getattr(self.pipe, self.encoder_slot)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.pipe, self.tokenizer_slot)

    @property
    def conditioning_width(self) -> int:
        """The embedding width the denoiser consumes: what a student must return."""
        return int(self.pipe.transformer.config[self.conditioning_width_key])


def register_adapter(adapter: type[PipelineAdapter]) -> type[PipelineAdapter]:
    """
    Register a pipeline family; usable as a class decorator. Registering a name twice raises.

    Example:

    ```python
    >>> @register_adapter
    ... class MyAdapter(PipelineAdapter):  # doctest: +SKIP
    ...     name = "my-family"
    ```
    """
    for attribute in ("name", "denoiser_class", "encoder_slot", "tokenizer_slot", "max_sequence_length",
                      "uses_attention_mask", "conditioning_width_key"):
        if not hasattr(adapter, attribute):
            raise TypeError(f"{adapter.__name__} cannot be registered: it does not set `{attribute}`.")
    if adapter.name in _ADAPTERS:
        raise ValueError(
            f"A pipeline family named {adapter.name!r} is already registered ({_ADAPTERS[adapter.name].__name__})."
        )
    _ADAPTERS[adapter.name] = adapter
    return adapter


def registered_families() -> list[str]:
    """Names of the registered pipeline families, e.g. `['flux-dev', 'flux-schnell', 'pixart-alpha', ...]`."""
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> type[PipelineAdapter]:
    """The registered adapter class of the family `name`; a `ValueError` naming the registered ones otherwise."""
    if name not in _ADAPTERS:
        raise ValueError(f"Unknown pipeline family {name!r}; registered: {', '.join(registered_families())}.")
    return _ADAPTERS[name]


def adapter_for(pipe: Any) -> PipelineAdapter:
    """
    The adapter of the family `pipe` belongs to; raises a `ValueError` listing the supported families otherwise.

    Example:

    ```python
    >>> adapter_for(FluxPipeline.from_pretrained(path)).encoder_slot  # doctest: +SKIP
    'text_encoder_2'
    ```
    """
    for adapter in _ADAPTERS.values():
        if adapter.matches(pipe):
            return adapter(pipe)
    raise ValueError(
        f"{type(pipe).__name__} is not a supported pipeline (transformer: "
        f"{type(getattr(pipe, 'transformer', None)).__name__}); supported families: "
        f"{', '.join(registered_families())}."
    )
