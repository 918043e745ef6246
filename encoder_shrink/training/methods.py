"""Training methods: each (text-encoder distillation, TiUE) is one registration of a recipe class, a build, a step."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.registry import Registry


def resolve(reference: Any) -> Any:
    """The object a `"module:attribute"` reference names (anything else is returned as it is)."""
    if not isinstance(reference, str):
        return reference
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _check_reference(owner: str, what: str, reference: Any) -> None:
    if isinstance(reference, str) and (reference.count(":") != 1 or not all(reference.split(":"))):
        raise InvalidArgumentError(f"training method {owner!r}: {what} {reference!r} is neither an object nor a "
                                   "'module:attribute' reference; pass e.g. 'encoder_shrink.distill.loop:step'.")


@dataclass(frozen=True)
class MethodCommand:
    r"""
    The CLI command a training method gets (`encoder-shrink distill`, `encoder-shrink tiue distill`); `cli.py` builds
    it from this, with the options every method has (`--pipeline`, `--recipe`, `--prompts`, `--output`, `--resume`,
    `--overwrite`, `--dtype`) and one flag per name in `overrides`.

    Args:
        words: the command's words under `encoder-shrink`; a two-word command goes under its group (`tiue`).
        help / description: the command's one line in the list, and its `--help` text (the description may be a
            function returning it, called only when the help is shown).
        default_recipe / default_output: `--recipe` and `--output` defaults.
        overrides: `(recipe field, type)` offered as `--field-name` flags (a `bool` field is a switch).
        dtype_help: what `--dtype` loads in the pipeline.
        arguments: `add_arguments(parser, names)` adding the method's own options; `names(kind)` is the CLI's lazily
            read list of a registry's names (`"losses"`, `"sources"`, ...).
        recipe_overrides: `recipe_overrides(args) -> dict`, what the method's own options change in the recipe,
            checked before the pipeline loads.
        run: `run(args, pipe, recipe, overrides, prompts) -> str`: trains on the loaded pipeline and returns the line
            the CLI prints.

    Every function is a `"module:function"` reference or the function itself; a reference is imported only when the
    command runs (the CLI's `--help` imports no method).

    Example:

    ```python
    >>> MethodCommand(("distill",), "distil", "Distil.", "tiny", "out", run="my.module:run").words
    ('distill',)
    ```
    """

    words: tuple[str, ...]
    help: str
    description: str
    default_recipe: str
    default_output: str
    overrides: tuple[tuple[str, type], ...] = ()
    dtype_help: str = "dtype the pipeline is loaded in"
    arguments: Any = None
    recipe_overrides: Any = None
    run: Any = None


@dataclass(frozen=True)
class TrainingMethod:
    r"""
    One training method: what [`register_training_method`] records.

    Args:
        name: the method's name, recorded in every checkpoint's `state.json` and run folder's `run.json`.
        recipe_class: its recipe dataclass (a `RecipeBase` subclass), or a `"module:Class"` reference.
        build: a context manager `build(parts, recipe, accelerator)` yielding the run's state (models, optimizers,
            schedules and the `TrainingState` a checkpoint holds, as `.state`, `.total`, `.desc`) and undoing what it
            changed on the user's models on exit.
        step: `step(built, run, i) -> {figure: value}`, one optimizer step.
        summarize: `summarize(built, summary) -> summary`, the method's figures from the run's history (optional).
        recipes: the sub-folder of the `encoder_shrink.recipes` package holding its bundled recipes (`""`: the top).
        command: its CLI command, or None for none.
    """

    name: str
    recipe_class: Any
    build: Any
    step: Any
    summarize: Any = None
    recipes: str = ""
    command: MethodCommand | None = field(default=None, compare=False)

    def resolved(self, what: str) -> Any:
        """`recipe_class`, `build`, `step` or `summarize`, imported if it is a reference."""
        return resolve(getattr(self, what))

    @property
    def recipes_dir(self) -> Path:
        """The folder of the method's bundled recipes (found without importing the recipes package)."""
        spec = importlib.util.find_spec("encoder_shrink.recipes")
        return Path(next(iter(spec.submodule_search_locations))) / self.recipes

    def bundled_recipes(self) -> dict[str, Path]:
        """The names of the method's bundled recipes and their files."""
        return {path.stem: path for path in sorted(self.recipes_dir.glob("*.yaml"))}


TRAINING_METHODS: Registry[TrainingMethod] = Registry("training method")
# The packages that register the built-in methods, imported on the first lookup; each is a light `__init__` (no torch),
# so the CLI's `--help` can list the methods' commands and recipes.
_BUILT_IN = ("encoder_shrink.distill", "encoder_shrink.tiue")


def register_training_method(name: str, recipe_class: Any, build: Any, step: Any, *, summarize: Any = None,
                             recipes: str = "", command: MethodCommand | None = None) -> TrainingMethod:
    r"""
    Register a training method (peft's shape: a method is a folder plus this one call). Its recipes load with
    `load_recipe(name, method=...)`, it trains with `encoder_shrink.training.run.run_method`, and `command` becomes a
    CLI command. A taken name raises.

    Example:

    ```python
    >>> register_training_method(  # doctest: +SKIP
    ...     "distill", "encoder_shrink.recipes.recipe:Recipe", "encoder_shrink.distill.loop:build",
    ...     "encoder_shrink.distill.loop:step")
    ```
    """
    for what, reference in (("recipe_class", recipe_class), ("build", build), ("step", step),
                            ("summarize", summarize)):
        _check_reference(name, what, reference)
    if command is not None and not command.words:
        raise InvalidArgumentError(f"training method {name!r}: its command needs at least one word.")
    return TRAINING_METHODS.register(name, TrainingMethod(name, recipe_class, build, step, summarize, recipes,
                                                          command))


def _load_built_in() -> None:
    for module in _BUILT_IN:
        importlib.import_module(module)


def get_training_method(name: str) -> TrainingMethod:
    """The registered training method `name`."""
    _load_built_in()
    return TRAINING_METHODS.get(name)


def registered_training_methods() -> list[str]:
    """The registered methods' names, in registration order (`['distill', 'tiue']`)."""
    _load_built_in()
    return list(TRAINING_METHODS)


__all__ = ["MethodCommand", "TRAINING_METHODS", "TrainingMethod", "get_training_method", "register_training_method",
           "registered_training_methods", "resolve"]
