"""Recipe / StageConfig / SourceConfig: a distillation recipe as validated dataclasses, loaded by name or path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from encoder_shrink.data.sources import registered_prompt_sources
from encoder_shrink.distill.losses import registered_losses
from encoder_shrink.errors import EncoderShrinkError
from encoder_shrink.registry import nearest as _nearest

RECIPES_DIR = Path(__file__).resolve().parent
MIXED_PRECISIONS = ("no", "bf16", "fp16")
# Learning-rate schedules of diffusers.optimization.get_scheduler that need no extra arguments.
LR_SCHEDULERS = ("linear", "constant", "constant_with_warmup", "cosine")
# A student_t5 starting with this names a folder inside the installed encoder_shrink package (a bundled T5, such as
# the toy world's pretrained t5-small), wherever the package is installed.
PACKAGE_PREFIX = "package:"


def resolve_student_t5(value: str) -> str:
    r"""
    The id or path `from_t5` loads for a recipe's `student_t5`: `"package:toy/t5_small"` becomes that folder inside
    the installed `encoder_shrink` package; anything else (a hub id, a path) is returned unchanged.

    Example:

    ```python
    >>> resolve_student_t5("google/t5-v1_1-base")
    'google/t5-v1_1-base'
    >>> resolve_student_t5("package:toy/t5_small").endswith("t5_small")
    True
    ```
    """
    if not value.startswith(PACKAGE_PREFIX):
        return value
    from importlib.resources import files

    folder = Path(str(files("encoder_shrink"))) / value[len(PACKAGE_PREFIX):]
    if not (folder / "config.json").is_file():
        raise RecipeError(f"student_t5 {value!r}: the installed encoder_shrink package has no T5 folder {folder}; "
                          "name a bundled folder (e.g. 'package:toy/t5_small'), a hub id or a local path.")
    return str(folder)


class RecipeError(EncoderShrinkError, ValueError):
    """A recipe file or override that does not validate."""


def _from_dict(cls, data: Any, where: str):
    """Build dataclass `cls` from a mapping, refusing unknown keys with the nearest known one."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise RecipeError(f"{where}: unknown key {key!r}.{_nearest(key, names)}")
    return cls(**data)


@dataclass
class SourceConfig:
    r"""
    One prompt source of a stage.

    Args:
        kind: `"compbench"` (T2I-CompBench txt files), `"commontext"` (generated, or a CommonText json),
            `"laion"` (a caption file: json, jsonl, parquet or txt), `"prompts"` (the `prompts` given to distill), or
            any kind registered with `encoder_shrink.data.register_prompt_source`.
        weight: relative share of the stage's prompts drawn from this source.
        path: local file or folder; `None` means the path must be given at distill time (`prompts={kind: path}`),
            except for `commontext`, which is then generated.
        categories: for `compbench`, the categories to read (default: color, shape, texture, spatial, 3d_spatial,
            numeracy, the paper's training set).
        split: `"train"` or `"val"` (CompBench `*_train.txt` / `*_val.txt`; CommonText train/validation split).
        limit: read at most this many prompts (for quick runs).

    Example:

    ```python
    >>> SourceConfig(kind="compbench", weight=2.0).split
    'train'
    ```
    """

    kind: str
    weight: float = 1.0
    path: str | None = None
    categories: list[str] | None = None
    split: str = "train"
    limit: int | None = None

    def __post_init__(self):
        kinds = registered_prompt_sources()
        if self.kind not in kinds:
            raise RecipeError(
                f"source kind {self.kind!r} is not one of {', '.join(kinds)}.{_nearest(self.kind, kinds)}"
            )
        if not self.weight > 0:
            raise RecipeError(f"source {self.kind!r}: weight must be > 0, got {self.weight!r}.")
        if self.split not in ("train", "val"):
            raise RecipeError(f"source {self.kind!r}: split must be 'train' or 'val', got {self.split!r}.")
        if self.limit is not None and self.limit <= 0:
            raise RecipeError(f"source {self.kind!r}: limit must be positive, got {self.limit!r}.")


@dataclass
class StageConfig:
    r"""
    A curriculum stage: `steps` optimizer steps on prompts mixed from `sources`, optionally at its own resolution
    (and, for video families, frame count), with
    its own loss (e.g. a cheap `"embedding"` stage that places the projector before the `"vision"` stage) and its own
    peak learning rate (the recipe's schedule shape still applies).

    Example:

    ```python
    >>> StageConfig(name="compbench", steps=100, sources=[SourceConfig(kind="compbench")]).resolution is None
    True
    ```
    """

    name: str
    steps: int
    sources: list[SourceConfig]
    resolution: int | None = None
    num_frames: int | None = None
    loss: str | None = None
    learning_rate: float | None = None

    def __post_init__(self):
        if self.steps <= 0:
            raise RecipeError(f"stage {self.name!r}: steps must be positive, got {self.steps!r}.")
        losses = registered_losses()
        if self.loss is not None and self.loss not in losses:
            raise RecipeError(
                f"stage {self.name!r}: loss {self.loss!r} is not one of {', '.join(losses)}."
                f"{_nearest(self.loss, losses)}"
            )
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise RecipeError(f"stage {self.name!r}: learning_rate must be positive, got {self.learning_rate!r}.")
        if not self.sources:
            raise RecipeError(f"stage {self.name!r}: needs at least one source.")
        self.sources = [
            s if isinstance(s, SourceConfig) else _from_dict(SourceConfig, s, f"stage {self.name!r} source")
            for s in self.sources
        ]
        for name in ("resolution", "num_frames"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RecipeError(f"stage {self.name!r}: {name} must be positive, got {value!r}.")


@dataclass(kw_only=True)
class RecipeBase:
    r"""
    What every training method's recipe has: its identity, the optimizer and schedule, precision, checkpoints, the seed
    and the held-out evaluation size. A method's recipe class (text-encoder distillation's [`Recipe`], TiUE's
    `TiUERecipe`) adds its own fields and may change these defaults; [`load_recipe`] loads any of them.

    Args:
        name / version / description: identity of the recipe, recorded in the model card.
        max_steps: optimizer steps of the run (a method may require it, or derive it).
        batch_size: prompts per optimizer step (or trajectory) and process.
        resolution: image size in pixels.
        learning_rate / weight_decay / adam_betas / adam_epsilon: AdamW.
        lr_scheduler / lr_warmup_steps: learning-rate schedule (diffusers' get_scheduler names).
        max_grad_norm: gradient clipping.
        checkpoint_every: full-state checkpoint interval in optimizer steps (0: only at the end, or on interrupt).
        mixed_precision: `"bf16"`/`"fp16"` autocast on accelerators (master weights stay fp32); CPU runs use fp32.
        gradient_checkpointing: recompute activations in the backward pass.
        seed: every random draw of the run derives from it.
        eval_prompt_count: held-out prompts for the figure measured before and after.

    Example:

    ```python
    >>> recipe = load_recipe("tiny")
    >>> isinstance(recipe, RecipeBase), recipe.seed
    (True, 0)
    ```
    """

    # The method the class is the recipe of, and how errors name it.
    method: ClassVar[str] = ""
    describes: ClassVar[str] = "recipe"

    name: str
    version: int = 1
    description: str = ""
    max_steps: int | None = None
    batch_size: int = 32
    resolution: int = 512
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "linear"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 1000
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_prompt_count: int = 16

    def __post_init__(self):
        for name in ("batch_size", "resolution", "learning_rate", "max_grad_norm", "eval_prompt_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be positive, got {value!r}.")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not self.max_steps > 0):
            raise RecipeError(f"recipe {self.name!r}: max_steps must be positive, got {self.max_steps!r}.")
        if self.checkpoint_every < 0 or self.lr_warmup_steps < 0 or self.weight_decay < 0:
            raise RecipeError(
                f"recipe {self.name!r}: checkpoint_every, lr_warmup_steps and weight_decay must be >= 0."
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise RecipeError(
                f"recipe {self.name!r}: adam_betas must be two values in [0, 1), got {self.adam_betas!r}."
            )
        self._check_choices(("lr_scheduler", LR_SCHEDULERS), ("mixed_precision", MIXED_PRECISIONS))

    def _check_choices(self, *choices: tuple[str, tuple[str, ...] | list[str]]) -> None:
        """Refuse a field whose value is not among its allowed ones, naming the nearest."""
        for name, allowed in choices:
            value = getattr(self, name)
            if value not in allowed:
                raise RecipeError(
                    f"recipe {self.name!r}: {name} {value!r} is not one of {', '.join(allowed)}."
                    f"{_nearest(str(value), allowed)}"
                )

    @property
    def total_steps(self) -> int:
        """Optimizer steps the run makes."""
        return self.max_steps

    def listing(self) -> tuple[str, str]:
        """The `encoder-shrink recipes` columns after the version: what the recipe is for, and its student."""
        return self.method, ""

    def with_overrides(self, **overrides):
        """A copy with fields replaced (and validated again); unknown names raise with the nearest field."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in names:
                raise RecipeError(f"unknown {self.describes} field {key!r} in overrides.{_nearest(key, names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class Recipe(RecipeBase):
    r"""
    A named, versioned text-encoder distillation recipe (see `recipes/*.yaml`), on [`RecipeBase`]'s shared fields.
    Every field can be overridden at distill time.

    Args:
        family: pipeline family the recipe is made for (`flux-dev`, `sd3`, ...); `None` for any.
        student_t5: id or path of the T5 the student starts from (its pretrained weights are kept); `package:PATH`
            is a folder inside the installed package (`resolve_student_t5`).
        student_config: T5Config fields for a student built without pretrained weights (tests, toy models).
        embedding_rank: rank of the factorised token embedding of a student of an LLM teacher (FLUX.2, Qwen-Image,
            ...), whose 130-260 k-token vocabulary it keeps; `None` there means a full table. Other families refuse it.
        max_sequence_length / use_attention_mask: how the pipeline encodes prompts; `None` takes the pipeline's
            own default, and the student records what was used.
        num_inference_steps: scheduler steps per trajectory (the paper: 20); each step is one optimizer step.
        resolution: image size in pixels of the trajectories (stages may override it).
        num_frames: frames per trajectory for video families (stages may override it); `None` takes the family's
            default.
        guidance_scales: values sampled per trajectory: FLUX-dev's guidance embedding, or the CFG scale of SD3 /
            PixArt (applied as the pipeline applies it). Ignored for pipelines without guidance.
        negative_prompt: the negative prompt CFG pipelines use (the student learns to reproduce it too).
        batch_size: prompts per trajectory.
        stages: the curriculum; `max_steps` defaults to the sum of their steps and may cut it short.
        gradient_checkpointing: recompute the frozen denoiser's activations in the backward pass.
        loss: `"vision"` (the paper's step-following loss), `"embedding"` (naive baseline) or any registered loss
            (`encoder_shrink.distill.register_loss`), for the stages that do not set their own; overriding it
            (`with_overrides(loss=...)`) sets it for every stage.
        seed: seeds latents, guidance and prompt sampling.
        eval_prompt_count: number of held-out prompts for the fidelity measured before and after.

    Example:

    ```python
    >>> recipe = load_recipe("tiny")
    >>> recipe.with_overrides(max_steps=4).max_steps
    4
    ```
    """

    method: ClassVar[str] = "distill"

    stages: list[StageConfig]
    family: str | None = None
    student_t5: str | None = None
    student_config: dict[str, Any] | None = None
    embedding_rank: int | None = None
    max_sequence_length: int | None = None
    use_attention_mask: bool | None = None
    num_inference_steps: int = 20
    num_frames: int | None = None
    guidance_scales: list[float] = field(default_factory=lambda: [3.5])
    negative_prompt: str = ""
    loss: str = "vision"

    def __post_init__(self):
        self.stages = [
            s if isinstance(s, StageConfig) else _from_dict(StageConfig, s, f"recipe {self.name!r} stage")
            for s in self.stages
        ]
        if not self.stages:
            raise RecipeError(f"recipe {self.name!r}: needs at least one stage.")
        super().__post_init__()
        if self.student_t5 is None and not self.student_config:
            raise RecipeError(
                f"recipe {self.name!r}: set student_t5 (a T5 id/path) or student_config (T5Config fields)."
            )
        if self.student_t5 is not None:
            resolve_student_t5(self.student_t5)  # a bundled folder that is not there fails now, not after loading
        if self.embedding_rank is not None and (isinstance(self.embedding_rank, bool) or self.embedding_rank <= 0):
            raise RecipeError(
                f"recipe {self.name!r}: embedding_rank must be a positive integer or null, "
                f"got {self.embedding_rank!r}."
            )
        if not self.num_inference_steps > 0:
            raise RecipeError(f"recipe {self.name!r}: num_inference_steps must be positive, "
                              f"got {self.num_inference_steps!r}.")
        for name in ("max_sequence_length", "num_frames"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be positive, got {value!r}.")
        if not self.guidance_scales or any(g <= 0 for g in self.guidance_scales):
            raise RecipeError(
                f"recipe {self.name!r}: guidance_scales must be positive values, got {self.guidance_scales!r}."
            )
        self._check_choices(("loss", registered_losses()))

    @property
    def total_steps(self) -> int:
        """Optimizer steps the run makes: `max_steps`, or the sum of the stages' steps."""
        return self.max_steps if self.max_steps is not None else sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, StageConfig]:
        """The stage (index, config) that optimizer step `step` (0-based) belongs to; the last stage continues."""
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage.steps
            if step < end:
                return index, stage
        return len(self.stages) - 1, self.stages[-1]

    def listing(self) -> tuple[str, str]:
        """The `encoder-shrink recipes` columns after the version: the family, and the T5 the student starts from."""
        return self.family or "any", self.student_t5 or "T5 config"

    def loss_at(self, step: int) -> str:
        """The loss of optimizer step `step` (0-based): its stage's own, or the recipe's."""
        return self.stage_at(step)[1].loss or self.loss

    def learning_rate_at(self, step: int) -> float:
        """The peak learning rate of optimizer step `step`'s stage (the schedule scales it)."""
        return self.stage_at(step)[1].learning_rate or self.learning_rate

    def with_overrides(self, **overrides) -> Recipe:
        """
        A copy with top-level fields replaced; unknown names raise with the nearest field. `loss` replaces the loss of
        every stage (`loss="embedding"` is the naive baseline of the whole recipe).
        """
        if overrides.get("loss") is not None:
            overrides["stages"] = [dataclasses.replace(s, loss=None) for s in overrides.get("stages", self.stages)]
        return super().with_overrides(**overrides)

    @property
    def losses(self) -> list[str]:
        """The losses the stages use, in order, each once."""
        return list(dict.fromkeys(s.loss or self.loss for s in self.stages))


def available_recipes(method: str = "distill") -> dict[str, Path]:
    """Names of the bundled recipes of training method `method` (text-encoder distillation by default), and files."""
    from encoder_shrink.training.methods import get_training_method

    return get_training_method(method).bundled_recipes()


def load_recipe(name_or_path: str | Path | RecipeBase, method: str = "distill") -> RecipeBase:
    r"""
    Load a bundled recipe of training method `method` by name (`"flux-t5base"`; TiUE's `"sd21-tiue"` with
    `method="tiue"`) or a recipe YAML by path, validated into the method's recipe class ([`Recipe`] for `"distill"`).

    Raises [`RecipeError`] for an unknown name (suggesting the nearest), a recipe of another method (naming its
    command), an unknown key or a bad value.

    Example:

    ```python
    >>> from encoder_shrink import load_recipe
    >>> load_recipe("flux-t5base").num_inference_steps
    20
    >>> load_recipe("sd21-tiue", method="tiue").num_steps
    4
    ```
    """
    from encoder_shrink.training.methods import get_training_method, registered_training_methods

    entry = get_training_method(method)
    recipe_class = entry.resolved("recipe_class")
    describes = recipe_class.describes
    if isinstance(name_or_path, RecipeBase):
        if not isinstance(name_or_path, recipe_class):
            raise RecipeError(f"recipe {name_or_path.name!r} is a {type(name_or_path).describes}, not a {describes}; "
                              f"load it with method={type(name_or_path).method!r}.")
        return name_or_path
    name = str(name_or_path)
    recipes = entry.bundled_recipes()
    path = recipes.get(name, Path(name_or_path))  # a bundled name (names may contain dots: sd3.5-large-t5base)
    if name not in recipes and path.suffix not in (".yaml", ".yml") and not path.is_file():
        for other in registered_training_methods():
            owner = get_training_method(other)
            if other != method and name in owner.bundled_recipes():
                words = " ".join(owner.command.words) if owner.command else other
                raise RecipeError(f"{name!r} is a {owner.resolved('recipe_class').describes} (training method "
                                  f"{other!r}), not a {describes}; use `encoder-shrink {words}` (or "
                                  f"load_recipe({name!r}, method={other!r})).")
        raise RecipeError(f"unknown {describes} {name!r}.{_nearest(name, recipes)} "
                          f"Bundled: {', '.join(recipes)}; or pass a path to a .yaml file.")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    try:
        return _from_dict(recipe_class, data, str(path))
    except TypeError as error:  # a missing required key
        raise RecipeError(f"{path}: {error}") from None
