"""PipelineAdapter: what encoder-shrink needs to know about one pipeline family, and the registry of families."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

logger = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """One sampling trajectory: latents advanced by the pipeline's own scheduler (a private copy of it)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    scheduler: Any
    # Pipeline-specific tensors that stay fixed along the trajectory (FLUX image ids, scheduler step kwargs, ...).
    extras: dict[str, Any] = field(default_factory=dict)

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
    # "embedded": a guidance embedding (FLUX-dev); "cfg": classifier-free guidance over a negative prompt
    # (SD3, PixArt); None: no guidance (FLUX-schnell).
    guidance: ClassVar[str | None]

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

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    # --- what the distiller calls; each family implements these with the pipeline's own helpers ---------------

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        """
        The texts that go through T5 for a batch of prompts, in the order the pipeline batches them: the prompts,
        preceded by the negative prompt once per prompt for CFG pipelines.
        """
        if self.guidance == "cfg":
            return [negative_prompt] * len(prompts) + list(prompts)
        return list(prompts)

    def tokenize(self, texts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (and the attention mask, for pipelines that pass one) exactly as the pipeline makes them."""
        tokens = self.tokenizer(
            list(texts), padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(self.device) if self.uses_attention_mask else None
        return tokens.input_ids.to(self.device), mask

    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        """
        The teacher's conditioning for `texts`, one row per text: `"t5"` (what the student replaces) and any other
        encoder-independent parts the denoiser needs (CLIP embeddings, pooled vectors).
        """
        raise NotImplementedError

    def start_trajectory(self, batch_size: int, resolution: int, num_inference_steps: int,
                         generator: torch.Generator) -> Trajectory:
        """Pure-noise latents and the scheduler's timesteps, prepared as the pipeline prepares them."""
        raise NotImplementedError

    def predict(self, trajectory: Trajectory, t: torch.Tensor, t5: torch.Tensor, rows: dict[str, torch.Tensor],
                attention_mask: torch.Tensor | None, guidance_scale: float | None) -> torch.Tensor:
        """
        The denoiser's prediction at timestep `t` for the current latents, with `t5` as the T5 part of the
        conditioning, guidance applied as the pipeline applies it (this is what the scheduler steps with).
        """
        raise NotImplementedError

    def step(self, trajectory: Trajectory, prediction: torch.Tensor, t: torch.Tensor) -> None:
        """Advance the trajectory's latents along `prediction` with the pipeline's scheduler."""
        trajectory.latents = trajectory.scheduler.step(
            prediction, t, trajectory.latents, **trajectory.extras.get("step_kwargs", {}), return_dict=False
        )[0]

    def _scheduler(self) -> Any:
        # A private copy: the scheduler is stateful (step index, multistep history) and the pipeline owns its own.
        return copy.deepcopy(self.pipe.scheduler)


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
                      "uses_attention_mask", "conditioning_width_key", "guidance"):
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
