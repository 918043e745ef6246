"""TiUERecipe: a TiUE distillation recipe (the paper's settings, or a tiny one) as a validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from encoder_shrink.recipes.recipe import (
    RecipeBase,
    RecipeError,
    SourceConfig,
    StageConfig,
    _from_dict,
    available_recipes,
    load_recipe,
)

KL_REDUCTIONS = ("mean", "sum")
# DDIMScheduler's spacings: "leading" is SD's (K = 4: [751, 501, 251, 1]); a one-step student needs "trailing" ([999]),
# since leading spacing puts K = 1 at t = 1, where pure noise is read as an almost clean image.
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(kw_only=True)
class TiUERecipe(RecipeBase):
    r"""
    A TiUE distillation recipe (`recipes/tiue/*.yaml`), on [`RecipeBase`]'s shared fields with TiUE's defaults. Every
    field can be overridden at distill time.

    Args:
        sources: the prompt sources (as a text-encoder recipe's stage; `journeydb` for the paper's captions).
        max_steps: optimizer steps of the student (the fake score makes one step each too); required.
        num_steps: K, the DDIM timesteps the student's decoder runs at once (the paper: 4, `[751, 501, 251, 1]`).
        timestep_spacing: how the K timesteps are spread (DDIMScheduler's `timestep_spacing`): `"leading"` as SD
            samples, `"trailing"` for K = 1 (`[999]`).
        resolution: image size in pixels the student is trained at.
        batch_size: prompts per optimizer step and process.
        learning_rate: Adam rate of the student (the whole UNet).
        lora_learning_rate / lora_rank / lora_alpha / lora_target_modules: the fake score, the teacher plus a LoRA
            (a larger rank and more targets make it stronger: DMD2, Yin et al. 2024, trains the whole fake UNet).
        fake_updates: fake-score updates per student update, each after the first on fresh samples of the updated
            student (DMD2's two time-scale update rule: 5 for SDXL, 10 for SD 1.5; 1 is TiUE's single update).
        guidance_scale: CFG scale of the teacher when it samples (the distance measured before and after), and of
            the VSD gradient unless `distill_guidance_scale` is set (no CFG at inference).
        distill_guidance_scale: CFG scale of the teacher and the fake score in the VSD gradient, the distillation
            target, separately from the teacher's sampling guidance (`None`: `guidance_scale`). VSD with a high
            guidance seeks the modes; DMD2 distils SD 1.5 at a guidance of 1.75.
        kl_weight / kl_reduction: lambda of the KL term, averaged (`"mean"`, scale-free) or summed over the K x B maps.
        regression_weight: weight of DMD's regression term (Yin et al. 2024, arXiv 2311.18828; 0.25 there, with
            LPIPS): the student maps the noise of a teacher ODE pair to the teacher's z_0 (mean squared error on
            latents), which anchors each noise to the teacher's layout where VSD alone seeks the modes (0: off).
        regression_pairs / regression_batch_size / regression_steps: the pairs, made before training by the teacher
            (DDIM at `regression_steps` with CFG at `guidance_scale`, from seeded noise, on prompts of the recipe's
            mixture), and how many of them each step regresses.
        min_timestep / max_timestep: range of the uniform VSD timestep (inclusive).
        uncond_probability: share of the fake score's training rows with the empty prompt (its CFG needs them).
        max_grad_norm: gradient clipping of the student and of the LoRA.
        lr_scheduler / lr_warmup_steps: learning-rate schedule of both optimizers.
        ema_decay: decay of the student's EMA (`None`: no EMA; the pipeline then holds the raw student).
        gradient_checkpointing: recompute the student's and the fake score's activations in the backward pass.
        checkpoint_every: full-state checkpoint interval in steps (0: only on interrupt or divergence).
        seed: every random draw of the run (noise, timesteps, prompts, dropped prompts, LoRA init) derives from it.
        eval_prompt_count / eval_images_per_prompt / eval_steps: the distribution distance measured before and after
            (teacher at `eval_steps` DDIM steps with CFG against the student, on held-out prompts): energy distances
            of latents and of decoded images ([`sample_distance`]).
        eval_metric: a registered image metric (`encoder_shrink.evaluation.registered_metrics()`, e.g. `"checker"`
            on the toy world, `"clip"`) scoring the teacher's and the student's held-out images beside the distances
            (`None`: distances only).

    Example:

    ```python
    >>> recipe = load_tiue_recipe("tiny-tiue")
    >>> recipe.with_overrides(max_steps=4).max_steps
    4
    ```
    """

    method: ClassVar[str] = "tiue"
    describes: ClassVar[str] = "TiUE recipe"

    sources: list[SourceConfig]
    max_steps: int
    # TiUE's defaults of the shared fields (the paper's settings)
    batch_size: int = 8
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = True
    eval_prompt_count: int = 8
    # TiUE's own
    num_steps: int = 4
    timestep_spacing: str = "leading"
    lora_learning_rate: float = 1e-3
    lora_rank: int = 64
    lora_alpha: int | None = None
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_v"])
    fake_updates: int = 1
    guidance_scale: float = 4.5
    distill_guidance_scale: float | None = None
    kl_weight: float = 0.1
    kl_reduction: str = "mean"
    regression_weight: float = 0.0
    regression_pairs: int = 1024
    regression_batch_size: int = 8
    regression_steps: int = 25
    min_timestep: int = 20
    max_timestep: int = 980
    uncond_probability: float = 0.1
    ema_decay: float | None = 0.9999
    eval_images_per_prompt: int = 4
    eval_steps: int = 25
    eval_metric: str | None = None

    def __post_init__(self):
        self.sources = [
            s if isinstance(s, SourceConfig) else _from_dict(SourceConfig, s, f"recipe {self.name!r} source")
            for s in self.sources
        ]
        if not self.sources:
            raise RecipeError(f"recipe {self.name!r}: needs at least one prompt source.")
        if self.max_steps is None:
            raise RecipeError(f"recipe {self.name!r}: max_steps must be positive, got None.")
        super().__post_init__()
        if not isinstance(self.fake_updates, int) or isinstance(self.fake_updates, bool):
            raise RecipeError(f"recipe {self.name!r}: fake_updates must be a whole number, got {self.fake_updates!r}.")
        positive = ("num_steps", "lora_learning_rate", "lora_rank", "fake_updates", "guidance_scale",
                    "eval_images_per_prompt", "eval_steps", "regression_pairs", "regression_batch_size",
                    "regression_steps")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not value > 0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be positive, got {value!r}.")
        bad_guidance = isinstance(self.distill_guidance_scale, bool) or not isinstance(
            self.distill_guidance_scale, (int, float, type(None)))
        if bad_guidance or (self.distill_guidance_scale is not None and not self.distill_guidance_scale > 0):
            raise RecipeError(
                f"recipe {self.name!r}: distill_guidance_scale must be positive or null (then guidance_scale), got "
                f"{self.distill_guidance_scale!r}.")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise RecipeError(f"recipe {self.name!r}: lora_alpha must be positive or null, got {self.lora_alpha!r}.")
        if not self.lora_target_modules:
            raise RecipeError(f"recipe {self.name!r}: lora_target_modules is empty; the paper uses [to_q, to_v].")
        for name in ("kl_weight", "regression_weight"):
            if isinstance(getattr(self, name), bool) or not getattr(self, name) >= 0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be >= 0, got {getattr(self, name)!r}.")
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
        self._check_choices(("kl_reduction", KL_REDUCTIONS), ("timestep_spacing", TIMESTEP_SPACINGS))
        if self.eval_metric is not None:
            from encoder_shrink.evaluation import registered_metrics

            self._check_choices(("eval_metric", registered_metrics()))
        if self.num_steps == 1 and self.timestep_spacing != "trailing":
            raise RecipeError(
                f"recipe {self.name!r}: num_steps 1 with timestep_spacing {self.timestep_spacing!r} samples at t = 1 "
                "or 0, where noise reads as a clean image; use timestep_spacing: trailing (t = 999)."
            )

    @property
    def target_guidance_scale(self) -> float:
        """The CFG scale of the VSD target: `distill_guidance_scale`, or `guidance_scale` when it is unset."""
        return self.guidance_scale if self.distill_guidance_scale is None else self.distill_guidance_scale

    def listing(self) -> tuple[str, str]:
        """The `encoder-shrink recipes` columns after the version: the method, and the student's K."""
        return "tiue", f"K = {self.num_steps}"

    @property
    def stage(self) -> StageConfig:
        """The recipe's prompt sources as one stage, for `encoder_shrink.data.build_mixture`."""
        return StageConfig(name=self.name, steps=self.max_steps, sources=self.sources)


def available_tiue_recipes() -> dict[str, Path]:
    """Names of the bundled TiUE recipes and their files (`available_recipes(method="tiue")`)."""
    return available_recipes(method="tiue")


def load_tiue_recipe(name_or_path: str | Path | TiUERecipe) -> TiUERecipe:
    r"""
    Load a bundled TiUE recipe by name (`"sd21-tiue"`) or a recipe YAML by path: `load_recipe(..., method="tiue")`.

    Example:

    ```python
    >>> load_tiue_recipe("sd21-tiue").num_steps
    4
    ```
    """
    return load_recipe(name_or_path, method="tiue")
