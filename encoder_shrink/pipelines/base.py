"""PipelineAdapter: everything encoder-shrink knows about one pipeline family, and the registry of families."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from encoder_shrink.errors import IncompatibleModelError, InvalidArgumentError, WrongModelTypeError
from encoder_shrink.registry import Registry

logger = logging.getLogger(__name__)

FAMILIES: Registry[type[PipelineAdapter]] = Registry("pipeline family")


@dataclass
class Trajectory:
    """One sampling trajectory: latents advanced by the pipeline's own scheduler (a private copy of it)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    scheduler: Any
    # Pipeline-specific tensors that stay fixed along the trajectory (FLUX image ids, scheduler step kwargs, ...).
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CopiedLogic:
    r"""
    Pipeline logic an adapter re-derives instead of calling (a schedule, a private helper's behaviour): where it lives
    in diffusers and the source lines the adapter follows. The shared test suite reads that source and fails when one
    of the lines is no longer there, i.e. when diffusers changed what the adapter copies.

    Example:

    ```python
    >>> CopiedLogic("diffusers.pipelines.flux.pipeline_flux.FluxPipeline.__call__",
    ...             ("self.scheduler.set_begin_index(0)",)).source.endswith("__call__")
    True
    ```
    """

    source: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class SyntheticSpec:
    r"""
    The published architecture a family's synthetic pipeline reproduces (`encoder-shrink bench --synthetic NAME`):
    which checkpoint it is, the parameter count of each component of that checkpoint (a test checks the synthetic
    build against them on the meta device), and which synthetic encoder is the teacher in the slot.

    Example:

    ```python
    >>> SyntheticSpec("black-forest-labs/FLUX.1-dev", {"transformer": 11_901_408_320}).parameters["transformer"]
    11901408320
    >>> SyntheticSpec.within_published(8_055_000_000, "8.1B")
    True
    ```
    """

    checkpoint: str
    # Exact counts: from the checkpoint's safetensors index (`total_size`) or published to the parameter.
    parameters: dict[str, int]
    # The synthetic encoder (`encoder_shrink.benchmarks.synthetic.T5_CONFIGS`) in the slot: what a student replaces.
    teacher: str = "t5-xxl"
    # The size of the `<family>-t5base` recipes' student (`T5_CONFIGS`): T5-base, UMT5-base for UMT5 slots.
    student: str = "t5-base"
    # Counts published only rounded ("8.1B", "17B"): checked to the precision they are given in.
    approximate: dict[str, str] = field(default_factory=dict)
    # Components whose parameter count the checkpoint does not publish at all: built from its config, not checked.
    unpublished: tuple[str, ...] = ()

    @staticmethod
    def within_published(count: int, published: str) -> bool:
        """Whether `count` rounds to `published` ("8.1B", "610M"): within half a unit of its last digit."""
        number, unit = published[:-1], published[-1]
        scale = {"B": 10**9, "M": 10**6}[unit]
        decimals = len(number.partition(".")[2])
        return abs(count / scale - float(number)) <= 0.5 * 10**-decimals

class PipelineAdapter:
    r"""
    One pipeline family: which slot holds the teacher encoder, its tokenizer, the padded length and mask the pipeline
    encodes prompts with, the conditioning width its denoiser expects, how guidance is applied; how to build the
    teacher's conditioning, start a trajectory, predict and step exactly as the pipeline does; which student class
    drops into the slot; tiny offline components for tests; and the published real architecture for benchmarks.

    A family is one file under `encoder_shrink/pipelines/` whose adapter subclass sets the class attributes, implements
    the hooks and is registered with [`register_adapter`] next to its definition. `adapter_for(pipe)` picks the family
    of a pipeline and wraps it.

    Example:

    ```python
    >>> adapter = adapter_for(pipe)  # doctest: +SKIP
    >>> adapter.name, adapter.encoder_slot, adapter.max_sequence_length  # doctest: +SKIP
    ('flux-dev', 'text_encoder_2', 512)
    ```
    """

    name: ClassVar[str]
    # The diffusers pipeline class of the family (what its tiny pipeline is built with, what its model card names).
    pipeline_class: ClassVar[str]
    # Other pipeline classes whose slot takes this family's students unchanged (same teacher, same call), e.g. FLUX's
    # Kontext, Fill and Control pipelines. A student is distilled on `pipeline_class`, whose sampling the adapter
    # reproduces, and dropped into these; each has a tiny offline pipeline (`tiny_drop_in`) the tests load it into.
    drop_in_pipelines: ClassVar[tuple[str, ...]] = ()
    # Class name of the denoiser (`pipe.transformer`) that identifies the family, derivatives included.
    denoiser_class: ClassVar[str]
    encoder_slot: ClassVar[str]
    tokenizer_slot: ClassVar[str]
    # Padded prompt length the pipeline encodes at by default, and whether it passes the tokenizer's attention mask to
    # its encoder.
    max_sequence_length: ClassVar[int]
    uses_attention_mask: ClassVar[bool]
    # False where the pipeline encodes each prompt at its own length, without padding, and pads the embeddings itself
    # (Bria). Training then encodes padded batches with the mask, which gives the same embeddings on the real tokens.
    pads_prompts: ClassVar[bool] = True
    # False where the encoder is called at a length that varies with the prompts (Qwen-Image pads to the batch's
    # longest; Sana calls it at instruction + length for prompts, at the length for negatives): the student then
    # records no length to warn about.
    fixed_call_length: ClassVar[bool] = True
    # The text positions the denoiser reads: None (every padded position, FLUX and SD3), "tokens" (the real tokens:
    # the pipeline masks the denoiser's attention, PixArt), or "tokens+1" (the real tokens and the first pad, Chroma).
    # The embedding loss and the fidelity measures weigh these positions only.
    denoiser_positions: ClassVar[str | None] = None
    # True where `tokenize` pads a batch to its longest call rather than to `encoded_length` (the traced adapter at
    # per-prompt lengths): a cache then pads the batch's teacher rows to the longest of them.
    pads_to_batch_longest: ClassVar[bool] = False
    # Why `max_sequence_length` differs from the pipeline's `__call__` default, where it does (checked by the tests).
    length_note: ClassVar[str] = ""
    # Key of `pipe.transformer.config` holding the width of the text conditioning.
    conditioning_width_key: ClassVar[str]
    # "embedded": a guidance embedding (FLUX-dev); "cfg": classifier-free guidance over a negative prompt
    # (SD3, PixArt); None: no guidance (FLUX-schnell).
    guidance: ClassVar[str | None]
    # Name of the student class (in `encoder_shrink`) that drops into the slot.
    student_kind: ClassVar[str] = "t5"
    # Video families: the frame count trajectories have when a recipe does not set one (the pipeline's default), and
    # the name of the pipeline's frame-count argument (Latte's is `video_length`).
    default_num_frames: ClassVar[int | None] = None
    frames_argument: ClassVar[str] = "num_frames"
    # Pipeline logic this adapter re-derives from diffusers; the test suite checks it against the installed source.
    copied_from: ClassVar[tuple[CopiedLogic, ...]] = ()
    # The published architecture for `--synthetic`; None if the family has no synthetic pipeline.
    synthetic: ClassVar[SyntheticSpec | None] = None

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "name", "pipeline_class", "denoiser_class", "encoder_slot", "tokenizer_slot", "max_sequence_length",
        "uses_attention_mask", "conditioning_width_key", "guidance",
    )

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        """Whether `pipe` belongs to this family (subclasses narrow this further, e.g. FLUX-dev vs schnell)."""
        denoiser = getattr(pipe, "transformer", None)
        return type(denoiser).__name__ == cls.denoiser_class and hasattr(pipe, cls.encoder_slot)

    @classmethod
    def student_class(cls) -> type:
        """The student class that drops into this family's slot (its `student_kind`'s, from the kind registry)."""
        from encoder_shrink.student_kinds import get_student_kind

        return get_student_kind(cls.student_kind).student_class

    @classmethod
    def diffusers_pipeline_class(cls) -> type:
        """The diffusers class `pipeline_class` names."""
        import diffusers

        return getattr(diffusers, cls.pipeline_class)

    def check_distillable(self) -> None:
        """
        A one-line error for a pipeline whose slot takes this family's students but whose sampling the adapter does
        not reproduce (a `drop_in_pipelines` class): distil on `pipeline_class`, then load the student into it.
        """
        name = type(self.pipe).__name__
        if name in self.drop_in_pipelines:
            raise IncompatibleModelError(
                f"{name} shares {self.pipeline_class}'s text encoder ({self.encoder_slot}): distil on "
                f"{self.pipeline_class} and load the student into {name} with "
                f"{name}.from_pretrained(..., {self.encoder_slot}=student)."
            )

    def release_teacher(self) -> None:
        """Take the teacher out of the pipeline (training reads its cached rows): its slot becomes None."""
        self.pipe.register_modules(**{self.encoder_slot: None})

    def prepare_for_sampling(self) -> None:
        """
        What the family's diffusers documentation has users do to a loaded pipeline before it can sample (Allegro's
        VAE decodes only tiled); nothing for most families. `load_pipeline` calls it.
        """

    @property
    def teacher(self) -> Any:
        """The encoder in the slot (the teacher, or a student already swapped in)."""
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
        """Where the denoiser runs (the encoder's device in a pipeline loaded without one, for caching)."""
        denoiser = getattr(self.pipe, "transformer", None)
        return denoiser.device if denoiser is not None else self.teacher.device

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        """Every frozen denoiser the pipeline samples with (Wan 2.2 switches to a second one at low noise)."""
        return [self.denoiser]

    # --- what the distiller calls -----------------------------------------------------------------------------------

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        """
        The texts that go through the encoder for a batch of prompts, in the order the pipeline batches them: the
        prompts, preceded by the negative prompt once per prompt for CFG pipelines.
        """
        if self.guidance == "cfg":
            return [negative_prompt] * len(prompts) + list(prompts)
        return list(prompts)

    def tokenize(self, texts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Token ids padded to `max_sequence_length` exactly as the pipeline makes them, and the tokenizer's attention
        mask (1 for real tokens). Whether the mask reaches the encoder is `encoder_mask`'s business.
        """
        tokens = self.tokenizer(
            list(texts), padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
        )
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def encoder_mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        """
        The mask the encoder (teacher or student) is called with on a padded batch: the tokenizer's where the pipeline
        passes it, or where it encodes unpadded prompts (the mask then stands for the absent padding); else None.
        """
        return mask if self.uses_attention_mask or not self.pads_prompts else None

    def attended(self, mask: torch.Tensor) -> torch.Tensor | None:
        """1 at the text positions the denoiser reads (see `denoiser_positions`), or None for all of them."""
        if self.denoiser_positions is None:
            return None
        if self.denoiser_positions == "tokens":
            return mask
        # "tokens+1": the real tokens and the first pad token after them.
        lengths = mask.sum(dim=1, keepdim=True)
        return (torch.arange(mask.shape[1], device=mask.device)[None] <= lengths).to(mask.dtype)

    def stored_lengths(self, texts: list[str], max_sequence_length: int) -> list[int] | None:
        """
        Per text, how many leading positions of its teacher row the denoiser may read, so a cache keeps only those
        (None: all of them, e.g. FLUX's padding).
        """
        if self.denoiser_positions is None:
            return None
        _, mask = self.tokenize(texts, max_sequence_length)
        attended = self.attended(mask)
        positions = torch.arange(attended.shape[1], device=attended.device)
        return [int((positions * (row > 0)).max()) + 1 for row in attended]

    @classmethod
    def record(cls, max_sequence_length: int) -> dict[str, Any]:
        """How the pipeline calls its encoder, as a student distilled for it records it (`ShrunkT5Config`)."""
        return {
            "pipeline_family": cls.name,
            "component": cls.encoder_slot,
            # Unpadded prompts come at every length: nothing for the student to warn about.
            "max_sequence_length": max_sequence_length if cls.pads_prompts and cls.fixed_call_length else None,
            "use_attention_mask": cls.uses_attention_mask,
        }

    def student_fields(self) -> dict[str, Any]:
        """
        Config fields a student needs to fit this pipeline besides `record`, read from the teacher in the slot (an LLM
        student's layers, widths, vocabulary and tokenizer fingerprint); none for T5 families.
        """
        return {}

    def encoded_length(self, max_sequence_length: int) -> int:
        """
        How many positions the encoder sees for prompts encoded at `max_sequence_length` (what `tokenize` pads to):
        the length itself, or more where the pipeline adds a template it drops afterwards (Qwen-Image, Sana).
        """
        return max_sequence_length

    def encoder_features(self, encoder: torch.nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None) -> torch.Tensor:
        """What the pipeline reads from an encoder (teacher or student) called on a batch: its last hidden state."""
        return encoder(input_ids, attention_mask=attention_mask)[0]

    def initialise_student(self, student: torch.nn.Module) -> None:
        """What a new student takes from the teacher beyond the recipe's T5 (an LLM student's token table)."""

    def check_student(self, student: torch.nn.Module) -> None:
        """A one-line error for a student of another kind of teacher (called by `check_compatible`)."""
        config = getattr(student, "config", None)
        if getattr(config, "model_type", None) == "shrunk_llm":
            raise IncompatibleModelError(
                f"the student reproduces hidden states of an LLM ({config.teacher_model_type}) but "
                f"{type(self.pipe).__name__} reads a T5's last hidden state; use a student distilled for {self.name}."
            )

    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        """
        The teacher's conditioning for `texts`, one row per text: `"t5"` (what the student replaces) and any other
        encoder-independent parts the denoiser needs (CLIP embeddings, pooled vectors).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement encode_teacher")

    def start_trajectory(self, batch_size: int, resolution: int, num_inference_steps: int,
                         generator: torch.Generator, num_frames: int | None = None,
                         texts: list[str] | None = None) -> Trajectory:
        """
        Pure-noise latents and the scheduler's timesteps, prepared as the pipeline's `__call__` prepares them;
        video families take `num_frames` (default: the family's `default_num_frames`). `texts` (the batch's
        `encoder_texts`) is what a traced pipeline samples with; a family's trajectory does not depend on them.
        """
        # Every pipeline module carries the same `retrieve_timesteps` (diffusers copies it between them).
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        if self.default_num_frames is None:
            latents, extras = self.prepare_latents(batch_size, resolution, generator)
        else:
            latents, extras = self.prepare_latents(batch_size, resolution, generator,
                                                   num_frames=num_frames or self.default_num_frames)
        scheduler = self._scheduler()
        timesteps, _ = retrieve_timesteps(
            scheduler,
            num_inference_steps,
            self.device,
            **self.timestep_kwargs(scheduler, num_inference_steps, latents),
        )
        if hasattr(scheduler, "set_begin_index"):  # as the pipelines do before their loop (a no-op for the index)
            scheduler.set_begin_index(0)
        return Trajectory(latents=latents, timesteps=timesteps, scheduler=scheduler, extras=extras)

    def checked_size(self, resolution: int, multiple: int) -> int:
        """
        `resolution` where the pipeline accepts it (its `check_inputs` wants multiples of `multiple`), else a one-line
        error naming the nearest size that works.
        """
        if resolution % multiple:
            raise InvalidArgumentError(
                f"{self.pipeline_class} generates at multiples of {multiple} px, not {resolution}; set the recipe's "
                f"resolution to {max(multiple, resolution // multiple * multiple)}."
            )
        return resolution

    def prepare_latents(self, batch_size: int, resolution: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """Pure-noise latents from the pipeline's own `prepare_latents`, and the extras that stay fixed with them."""
        latents = self.pipe.prepare_latents(batch_size, self.denoiser.config.in_channels, resolution, resolution,
                                            self.denoiser.dtype, self.device, generator)
        return latents, {}

    def timestep_kwargs(self, scheduler: Any, num_inference_steps: int, latents: torch.Tensor) -> dict[str, Any]:
        """Extra arguments of `retrieve_timesteps` (custom sigmas, the resolution-dependent shift `mu`)."""
        return {}

    def predict(self, trajectory: Trajectory, t: torch.Tensor, t5: torch.Tensor, rows: dict[str, torch.Tensor],
                attention_mask: torch.Tensor | None, guidance_scale: float | None) -> torch.Tensor:
        """
        The denoiser's prediction at timestep `t` for the current latents, with `t5` as the encoder's part of the
        conditioning, guidance applied as the pipeline applies it (this is what the scheduler steps with).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def step(self, trajectory: Trajectory, prediction: torch.Tensor, t: torch.Tensor) -> None:
        """Advance the trajectory's latents along `prediction` with the pipeline's scheduler."""
        trajectory.latents = trajectory.scheduler.step(
            prediction, t, trajectory.latents, **trajectory.extras.get("step_kwargs", {}), return_dict=False
        )[0]

    @classmethod
    def guidance_call_kwargs(cls, guidance_scale: float) -> dict[str, Any]:
        """The arguments of the pipeline's `__call__` that make it guide at `guidance_scale` as `predict` does."""
        return {"guidance_scale": guidance_scale}

    @staticmethod
    def norm_rescaled_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """CFG rescaled to the conditional prediction's norm over the last axis (Qwen-Image's true CFG, Lumina2)."""
        combined = uncond + guidance_scale * (cond - uncond)
        return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    @staticmethod
    def classifier_free_guidance(prediction: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """`uncond + scale * (cond - uncond)` over a batch whose first half is unconditional, as CFG pipelines do."""
        uncond, text = prediction.chunk(2)
        return uncond + guidance_scale * (text - uncond)

    def _scheduler(self) -> Any:
        # A private copy: the scheduler is stateful (step index, multistep history) and the pipeline owns its own.
        return copy.deepcopy(self.pipe.scheduler)

    # --- tiny offline pipelines (tests, demos) -----------------------------------------------------------------------

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        """Random, tiny components of a pipeline of this family, keyed as the pipeline's constructor expects them."""
        raise NotImplementedError(f"{cls.__name__} has no tiny components")

    @classmethod
    def tiny_call_kwargs(cls) -> dict[str, Any]:
        """Call arguments the family's tiny pipeline needs besides steps, length, seed and output type (image size)."""
        return {"height": 16, "width": 16}

    @classmethod
    def tiny_drop_in(cls, pipeline_class: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Tiny components and call arguments of one of `drop_in_pipelines` (its slot takes this family's students)."""
        raise NotImplementedError(f"{cls.__name__} has no tiny {pipeline_class}")

    # --- the published architecture (benchmarks) -------------------------------------------------------------------

    @classmethod
    def synthetic_components(cls, build, text_encoder=None) -> dict[str, Any]:
        """
        The components of the published pipeline (`synthetic`) with random weights. `build` is an
        `encoder_shrink.benchmarks.synthetic.Builder` (meta construction, materialisation, tokenizers, T5, CLIP, VAE);
        `text_encoder` replaces the teacher in the slot (a student), so the teacher is never built.
        """
        raise NotImplementedError(f"{cls.__name__} has no synthetic architecture")


def register_adapter(adapter: type[PipelineAdapter]) -> type[PipelineAdapter]:
    """
    Register a pipeline family; used as a class decorator next to the adapter's definition. A family that does not set
    every required attribute, has no tiny components, or whose name is taken raises.

    Example:

    ```python
    >>> @register_adapter
    ... class MyAdapter(PipelineAdapter):  # doctest: +SKIP
    ...     name = "my-family"
    ```
    """
    if not (isinstance(adapter, type) and issubclass(adapter, PipelineAdapter)):
        raise WrongModelTypeError(f"register_adapter expects a PipelineAdapter subclass, got {adapter!r}.")
    for attribute in PipelineAdapter.REQUIRED:
        if not hasattr(adapter, attribute):
            raise WrongModelTypeError(f"{adapter.__name__} cannot be registered: it does not set `{attribute}`.")
    for hook in ("encode_teacher", "predict", "tiny_components"):
        if not _overrides(adapter, hook):
            raise WrongModelTypeError(f"{adapter.__name__} cannot be registered: it does not implement `{hook}`.")
    if adapter.drop_in_pipelines and not _overrides(adapter, "tiny_drop_in"):
        raise WrongModelTypeError(
            f"{adapter.__name__} cannot be registered: it lists drop_in_pipelines but does not implement "
            "`tiny_drop_in`."
        )
    if adapter.synthetic is not None and not _overrides(adapter, "synthetic_components"):
        raise WrongModelTypeError(
            f"{adapter.__name__} cannot be registered: it sets `synthetic` but does not implement "
            "`synthetic_components`."
        )
    return FAMILIES.register(adapter.name, adapter)


def _overrides(adapter: type[PipelineAdapter], hook: str) -> bool:
    """Whether `adapter` implements `hook` rather than inheriting the base's (methods and classmethods alike)."""

    def function(cls):
        attribute = getattr(cls, hook)
        return getattr(attribute, "__func__", attribute)

    return function(adapter) is not function(PipelineAdapter)


def registered_families() -> list[str]:
    """Names of the registered pipeline families, e.g. `['flux-dev', 'flux-schnell', 'pixart-alpha', ...]`."""
    return FAMILIES.names()


def get_adapter(name: str) -> type[PipelineAdapter]:
    """The registered adapter class of family `name`; an `UnknownNameError` naming the registered ones otherwise."""
    return FAMILIES.get(name)


def synthetic_families() -> list[str]:
    """Names of the registered families that have a synthetic real-architecture pipeline."""
    return [name for name in FAMILIES.names() if FAMILIES.get(name).synthetic is not None]


def adapter_for(pipe: Any, slot: str | None = None, call_kwargs: dict[str, Any] | None = None) -> PipelineAdapter:
    """
    The adapter of the family `pipe` belongs to (one whose slot is `slot`, when given); a pipeline no family file
    describes is traced ([`~encoder_shrink.pipelines.traced.TracedAdapter`]: its own `__call__` runs on probe prompts,
    with `call_kwargs` such as a small `height`/`width`). A pipeline the trace cannot serve raises a one-line
    `IncompatibleModelError` saying why. The traced adapter is kept on the pipeline, so it is traced once per slot.

    Example:

    ```python
    >>> adapter_for(FluxPipeline.from_pretrained(path)).encoder_slot  # doctest: +SKIP
    'text_encoder_2'
    ```
    """
    for adapter in FAMILIES.values():
        if adapter.matches(pipe) and slot in (None, adapter.encoder_slot):
            return adapter(pipe)
    from encoder_shrink.pipelines.traced import TracedAdapter

    traced = vars(pipe).setdefault("_encoder_shrink_traced", {})
    # A new encoder in a slot (a student swapped in) is traced again.
    encoders = tuple(id(m) for k, m in pipe.components.items() if k.startswith("text_encoder"))
    key = (slot, encoders, repr(sorted((call_kwargs or {}).items())))
    if key not in traced:
        traced[key] = TracedAdapter(pipe, slot=slot, call_kwargs=call_kwargs)
    return traced[key]
