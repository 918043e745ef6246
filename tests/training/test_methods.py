"""The training-method registry: a third method registered in a test loads its recipes, trains through the shared
scaffold (bit-identical reruns, resume) and gets its CLI command, with no edit outside its own code."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from encoder_shrink.recipes import RecipeBase, RecipeError, load_recipe

from encoder_shrink.errors import DuplicateRegistrationError, InvalidArgumentError
from encoder_shrink.training.checkpoint import TrainingState, checkpoint_dir
from encoder_shrink.training.methods import (
    TRAINING_METHODS,
    MethodCommand,
    get_training_method,
    register_training_method,
    registered_training_methods,
)
from encoder_shrink.training.run import Built, run_method, step_seed

NAME = "linear-fit"


@dataclasses.dataclass(kw_only=True)
class LinearRecipe(RecipeBase):
    method = NAME
    describes = "linear-fit recipe"

    max_steps: int
    width: int = 4
    batch_size: int = 8
    learning_rate: float = 1e-2
    mixed_precision: str = "no"

    def __post_init__(self):
        super().__post_init__()
        if self.width <= 0:
            raise RecipeError(f"recipe {self.name!r}: width must be positive, got {self.width!r}.")


@dataclasses.dataclass(kw_only=True)
class LinearBuilt(Built):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    recipe: LinearRecipe


@contextmanager
def build(parts, recipe, accelerator):
    model = parts["model"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    state = TrainingState({"model": model}, {"optimizer": optimizer}, {})
    model.train()
    try:
        yield LinearBuilt(state=state, total=recipe.max_steps, desc=NAME, model=model, optimizer=optimizer,
                          recipe=recipe)
    finally:
        model.eval()  # what the build changed, undone


def step(b, run, at):
    generator = torch.Generator().manual_seed(step_seed(b.recipe.seed, at, 0))
    x = torch.randn(b.recipe.batch_size, b.recipe.width, generator=generator)
    loss = torch.nn.functional.mse_loss(b.model(x), x.flip(-1))
    run.guard(loss, "loss")
    loss.backward()
    with run.updating():
        b.optimizer.step()
        b.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.item()}


def summarize(b, summary):
    losses = summary.pop("history")["loss"]
    return {**summary, "loss_first": losses[0], "loss_last": losses[-1]}


def run(args, pipe, recipe, overrides, prompts):
    model = torch.nn.Linear(recipe.width, recipe.width)
    summary, _ = run_method(NAME, {"model": model}, recipe, Accelerator(cpu=True), output_dir=Path(args.output))
    return f"{type(pipe).__name__}: {summary['steps']} steps, loss {summary['loss_first']:.3f} -> " \
           f"{summary['loss_last']:.3f}"


@pytest.fixture
def linear_method():
    """The method registered for one test, and unregistered after it."""
    registered_training_methods()
    method = register_training_method(
        NAME, LinearRecipe, build, step, summarize=summarize,
        command=MethodCommand(words=("fit", "linear"), help="fit a linear map", description="Fit a linear map.",
                              default_recipe="none", default_output="fit-out",
                              overrides=(("max_steps", int), ("width", int)), run=run))
    yield method
    del TRAINING_METHODS._items[NAME]


def _recipe_file(tmp_path, **fields) -> Path:
    path = tmp_path / "linear.yaml"
    path.write_text(yaml.safe_dump({"name": "linear", "max_steps": 6, "checkpoint_every": 2, **fields}))
    return path


def _train(recipe, output_dir=None, resume=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(recipe.width, recipe.width)
    summary, built = run_method(NAME, {"model": model}, recipe, Accelerator(cpu=True), output_dir=output_dir,
                                resume=resume)
    return summary, model


def test_built_in_methods_are_registered_with_their_recipes():
    assert registered_training_methods()[:2] == ["distill", "tiue"]
    assert "sd21-tiue" in get_training_method("tiue").bundled_recipes()
    assert "flux-t5base" in get_training_method("distill").bundled_recipes()
    assert type(load_recipe("sd21-tiue", method="tiue")).__name__ == "TiUERecipe"
    assert type(load_recipe("tiny")).__name__ == "Recipe"


def test_one_loader_refuses_another_methods_recipe_naming_its_command():
    with pytest.raises(RecipeError, match=r"is a TiUE recipe .*encoder-shrink tiue distill"):
        load_recipe("sd21-tiue")
    with pytest.raises(RecipeError, match=r"'flux-t5base' is a recipe .*encoder-shrink distill"):
        load_recipe("flux-t5base", method="tiue")
    with pytest.raises(RecipeError, match="is a TiUE recipe, not a recipe"):
        load_recipe(load_recipe("tiny-tiue", method="tiue"))


def test_the_shared_fields_are_validated_once_for_every_method():
    for name, method in (("tiny", "distill"), ("tiny-tiue", "tiue")):
        recipe = load_recipe(name, method=method)
        for field, bad in (("adam_betas", [0.9, 1.5]), ("lr_scheduler", "cosine_warm"), ("batch_size", 0),
                           ("mixed_precision", "fp8")):
            with pytest.raises(RecipeError, match=f"{field}.*{bad!r}"[:40].replace("[", r"\[")):
                recipe.with_overrides(**{field: bad})


def test_a_registration_is_checked_and_a_duplicate_raises(linear_method):
    with pytest.raises(DuplicateRegistrationError, match=NAME):
        register_training_method(NAME, LinearRecipe, build, step)
    with pytest.raises(InvalidArgumentError, match="'module:attribute'"):
        register_training_method("other", "LinearRecipe", build, step)


def test_a_registered_method_trains_on_the_scaffold_bit_identically_and_resumes(linear_method, tmp_path):
    recipe = load_recipe(_recipe_file(tmp_path), method=NAME)
    assert isinstance(recipe, LinearRecipe)
    summary, first = _train(recipe)
    _, second = _train(recipe)
    assert summary["loss_last"] < summary["loss_first"]
    assert torch.equal(first.weight, second.weight)

    # Stopped after 3 of 6 steps (a checkpoint at 2), then resumed: the uninterrupted run's bits.
    _train(recipe.with_overrides(max_steps=3), output_dir=tmp_path / "run")
    resumed_summary, resumed = _train(recipe, output_dir=tmp_path / "run", resume=True)
    assert resumed_summary["steps_this_run"] == 4
    assert torch.equal(resumed.weight, first.weight)
    state = yaml.safe_load((checkpoint_dir(tmp_path / "run", 2) / "state.json").read_text())
    assert (state["method"], state["recipe"]) == (NAME, "linear")


def test_a_registered_method_gets_its_cli_command(linear_method, tmp_path, tiny_pipeline_dirs, capsys):
    from encoder_shrink.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["fit", "linear", "--pipeline", "p", "--recipe", "r.yaml", "--width", "3"])
    assert (args.method, args.width, args.max_steps) == (NAME, 3, None)
    recipe = _recipe_file(tmp_path)
    out = tmp_path / "out"
    assert main(["fit", "linear", "--pipeline", str(tiny_pipeline_dirs["pixart-sigma"]), "--recipe", str(recipe),
                 "--max-steps", "4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("PixArtSigmaPipeline: 4 steps"), printed
    assert checkpoint_dir(out, 2).is_dir()
    # The override flag reached the recipe; a misspelt recipe is one line and exit 2, before the pipeline loads.
    assert main(["fit", "linear", "--pipeline", str(tiny_pipeline_dirs["pixart-sigma"]), "--recipe", "lnear",
                 "--output", str(tmp_path / "o2")]) == 2
    assert "unknown linear-fit recipe 'lnear'" in capsys.readouterr().err
