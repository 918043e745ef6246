"""TiUERecipe: a TiUE distillation recipe (the paper's settings, or a tiny one) as a validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from encoder_shrink.recipes.recipe import (
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    RECIPES_DIR,
    RecipeError,
    SourceConfig,
    StageConfig,
    _from_dict,
)
from encoder_shrink.registry import nearest as _nearest

TIUE_RECIPES_DIR = RECIPES_DIR / "tiue"
KL_REDUCTIONS = ("mean", "sum")
# DDIMScheduler's spacings: "leading" is SD's (K = 4: [751, 501, 251, 1]); a one-step student needs "trailing" ([999]),
# since leading spacing puts K = 1 at t = 1, where pure noise is read as an almost clean image.
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class TiUERecipe:
    r"""
    A TiUE distillation recipe (`recipes/tiue/*.yaml`). Every field can be overridden at distill time.

    Args:
        name / version / description: identity of the recipe, recorded in the model card.
        sources: the prompt sources (as a text-encoder recipe's stage; `journeydb` for the paper's captions).
        num_steps: K, the DDIM timesteps the student's decoder runs at once (the paper: 4, `[751, 501, 251, 1]`).
        timestep_spacing: how the K timesteps are spread (DDIMScheduler's `timestep_spacing`): `"leading"` as SD
            samples, `"trailing"` for K = 1 (`[999]`).
        resolution: image size in pixels the student is trained at.
        batch_size: prompts per optimizer step and process.
        max_steps: optimizer steps of the student (the fake score makes one step each too).
        learning_rate: Adam rate of the student (the whole UNet).
        lora_learning_rate / lora_rank / lora_alpha / lora_target_modules: the fake score, the teacher plus a LoRA.
        guidance_scale: CFG scale of the teacher and the fake score in the VSD gradient (no CFG at inference).
        kl_weight / kl_reduction: lambda of the KL term, averaged (`"mean"`, scale-free) or summed over the K x B maps.
        min_timestep / max_timestep: range of the uniform VSD timestep (inclusive).
        uncond_probability: share of the fake score's training rows with the empty prompt (its CFG needs them).
        max_grad_norm: gradient clipping of the student and of the LoRA.
        adam_betas / adam_epsilon / weight_decay: Adam(W) of both optimizers.
        lr_scheduler / lr_warmup_steps: learning-rate schedule of both (diffusers' get_scheduler names).
        ema_decay: decay of the student's EMA (`None`: no EMA; the pipeline then holds the raw student).
        mixed_precision: `"fp16"`/`"bf16"` autocast on accelerators (master weights fp32); CPU runs use fp32.
        gradient_checkpointing: recompute the student's and the fake score's activations in the backward pass.
        checkpoint_every: full-state checkpoint interval in steps (0: only on interrupt or divergence).
        seed: every random draw of the run (noise, timesteps, prompts, dropped prompts, LoRA init) derives from it.
        eval_prompt_count / eval_images_per_prompt / eval_steps: the distribution distance measured before and after
            (teacher at `eval_steps` DDIM steps with CFG against the student, on held-out prompts).

    Example:

    ```python
    >>> recipe = load_tiue_recipe("tiny-tiue")
    >>> recipe.with_overrides(max_steps=4).max_steps
    4
    ```
    """

    name: str
    sources: list[SourceConfig]
    max_steps: int
    version: int = 1
    description: str = ""
    num_steps: int = 4
    timestep_spacing: str = "leading"
    resolution: int = 512
    batch_size: int = 8
    learning_rate: float = 1e-6
    lora_learning_rate: float = 1e-3
    lora_rank: int = 64
    lora_alpha: int | None = None
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_v"])
    guidance_scale: float = 4.5
    kl_weight: float = 0.1
    kl_reduction: str = "mean"
    min_timestep: int = 20
    max_timestep: int = 980
    uncond_probability: float = 0.1
    max_grad_norm: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    ema_decay: float | None = 0.9999
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 1000
    seed: int = 0
    eval_prompt_count: int = 8
    eval_images_per_prompt: int = 4
    eval_steps: int = 25

    def __post_init__(self):
        self.sources = [
            s if isinstance(s, SourceConfig) else _from_dict(SourceConfig, s, f"recipe {self.name!r} source")
            for s in self.sources
        ]
        if not self.sources:
            raise RecipeError(f"recipe {self.name!r}: needs at least one prompt source.")
        positive = ("num_steps", "resolution", "batch_size", "max_steps", "learning_rate", "lora_learning_rate",
                    "lora_rank", "guidance_scale", "max_grad_norm", "eval_prompt_count", "eval_images_per_prompt",
                    "eval_steps")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not value > 0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be positive, got {value!r}.")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise RecipeError(f"recipe {self.name!r}: lora_alpha must be positive or null, got {self.lora_alpha!r}.")
        if not self.lora_target_modules:
            raise RecipeError(f"recipe {self.name!r}: lora_target_modules is empty; the paper uses [to_q, to_v].")
        if self.kl_weight < 0:
            raise RecipeError(f"recipe {self.name!r}: kl_weight must be >= 0, got {self.kl_weight!r}.")
        if not 0 <= self.min_timestep <= self.max_timestep <= 999:
            raise RecipeError(
                f"recipe {self.name!r}: need 0 <= min_timestep <= max_timestep <= 999, got "
                f"{self.min_timestep!r}..{self.max_timestep!r}."
            )
        if not 0 <= self.uncond_probability < 1:
            raise RecipeError(
                f"recipe {self.name!r}: uncond_probability must be in [0, 1), got {self.uncond_probability!r}."
            )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise RecipeError(f"recipe {self.name!r}: ema_decay must be in (0, 1) or null, got {self.ema_decay!r}.")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise RecipeError(
                f"recipe {self.name!r}: adam_betas must be two values in [0, 1), got {self.adam_betas!r}."
            )
        if self.checkpoint_every < 0 or self.lr_warmup_steps < 0 or self.weight_decay < 0:
            raise RecipeError(
                f"recipe {self.name!r}: checkpoint_every, lr_warmup_steps and weight_decay must be >= 0."
            )
        for name, allowed in (("lr_scheduler", LR_SCHEDULERS), ("mixed_precision", MIXED_PRECISIONS),
                              ("kl_reduction", KL_REDUCTIONS), ("timestep_spacing", TIMESTEP_SPACINGS)):
            value = getattr(self, name)
            if value not in allowed:
                raise RecipeError(f"recipe {self.name!r}: {name} {value!r} is not one of {', '.join(allowed)}."
                                  f"{_nearest(str(value), allowed)}")

        if self.num_steps == 1 and self.timestep_spacing != "trailing":
            raise RecipeError(
                f"recipe {self.name!r}: num_steps 1 with timestep_spacing {self.timestep_spacing!r} samples at t = 1 "
                "or 0, where noise reads as a clean image; use timestep_spacing: trailing (t = 999)."
            )

    @property
    def stage(self) -> StageConfig:
        """The recipe's prompt sources as one stage, for `encoder_shrink.data.build_mixture`."""
        return StageConfig(name=self.name, steps=self.max_steps, sources=self.sources)

    def with_overrides(self, **overrides) -> TiUERecipe:
        """A copy with fields replaced; unknown names raise with the nearest field."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in names:
                raise RecipeError(f"unknown TiUE recipe field {key!r} in overrides.{_nearest(key, names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_tiue_recipes() -> dict[str, Path]:
    """Names of the bundled TiUE recipes and their files."""
    return {path.stem: path for path in sorted(TIUE_RECIPES_DIR.glob("*.yaml"))}


def load_tiue_recipe(name_or_path: str | Path | TiUERecipe) -> TiUERecipe:
    r"""
    Load a bundled TiUE recipe by name (`"sd21-tiue"`) or a recipe YAML by path, validated into a [`TiUERecipe`].

    Example:

    ```python
    >>> load_tiue_recipe("sd21-tiue").num_steps
    4
    ```
    """
    if isinstance(name_or_path, TiUERecipe):
        return name_or_path
    recipes = available_tiue_recipes()
    path = recipes.get(str(name_or_path), Path(name_or_path))
    if str(name_or_path) not in recipes and path.suffix not in (".yaml", ".yml"):
        raise RecipeError(f"unknown TiUE recipe {str(name_or_path)!r}.{_nearest(str(name_or_path), recipes)} "
                          f"Bundled: {', '.join(recipes)}; or pass a path to a .yaml file.")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    try:
        return _from_dict(TiUERecipe, data, str(path))
    except TypeError as error:  # a missing required key
        raise RecipeError(f"{path}: {error}") from None
