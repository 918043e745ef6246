"""The toy world's TiUE students: the toy SD teacher's UNet distilled by recipe `toy-tiue` at K = 4, and at K = 1.

Run:  python -m encoder_shrink.toy.tiue_students --output encoder_shrink/toy/tiue_students [--resume]

A student folder holds the student's `unet/`, its `scheduler/` (DDIM config and spacing) and `training_summary.json`;
`load_toy_tiue` assembles the [`TiUEPipeline`] with the teacher's VAE, text encoder and tokenizer, which TiUE does
not train, so they ship once.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

from encoder_shrink.errors import InputNotFoundError, InvalidArgumentError
from encoder_shrink.files import atomic_dir
from encoder_shrink.toy.world import sample_prompts

logger = logging.getLogger(__name__)

# The students shipped with the package (this module's main re-creates them).
BUNDLED_TIUE = Path(__file__).parent / "tiue_students"
RECIPE = "toy-tiue"
# The two students of the demo: TiUE at the paper's K = 4, and the one-step ablation trained the same way (its one
# timestep at 999: leading spacing would put it at t = 1).
STUDENTS = {"k4": {"num_steps": 4}, "k1": {"num_steps": 1, "timestep_spacing": "trailing"}}
# Training prompts: the world's train split, balanced over the four kinds, as the text-encoder demo draws them (more
# than the split's 2,730 prompts, so the rare kinds repeat: every train prompt is in).
TRAIN_PROMPTS = 4000


def _check_name(name: str) -> None:
    if name not in STUDENTS:
        raise InvalidArgumentError(f"unknown toy TiUE student {name!r}; use one of {', '.join(STUDENTS)}.")


def summary_prompts(count: int, seed: int = 0) -> list[str]:
    r"""
    The held-out prompts a toy student's training summary measures (`distance_before` / `distance_after`): `count` of
    the world's held-out split (never trained on), drawn with another seed than the demo's (seed 1). The split is
    small, so the two overlap: at 64 each holds 43 distinct prompts, 23 of them shared.

    Example:

    ```python
    >>> len(summary_prompts(8)), summary_prompts(8) == summary_prompts(8, seed=1)
    (8, False)
    ```
    """
    return [p.text for p in sample_prompts(count, "heldout", seed=seed + 2)]


def distill_toy_tiue(name: str, output_dir: str | Path, teacher=None, resume: bool = False, seed: int = 0,
                     **overrides):
    r"""
    Distil the toy SD teacher's UNet into the TiUE student `name` (`"k4"` or `"k1"`) with recipe `toy-tiue`
    (`seed` is the recipe's and draws the training prompts; `overrides` are recipe fields); checkpoints and the full
    run go to `output_dir`. Returns the [`TiUEPipeline`] (and keeps the distiller's summary
    on it as `pipe.training_summary`).

    Example:

    ```python
    >>> pipe = distill_toy_tiue("k4", "runs/k4")  # doctest: +SKIP
    >>> pipe.timesteps  # doctest: +SKIP
    (751, 501, 251, 1)
    ```
    """
    from encoder_shrink.tiue import TiUEDistiller, load_tiue_recipe
    from encoder_shrink.toy.sd_teacher import load_toy_sd_teacher

    _check_name(name)
    teacher = teacher if teacher is not None else load_toy_sd_teacher()
    recipe = load_tiue_recipe(RECIPE).with_overrides(**{**STUDENTS[name], "seed": seed, **overrides})
    train = [p.text for p in sample_prompts(TRAIN_PROMPTS, "train", seed=seed)]
    held_out = summary_prompts(recipe.eval_prompt_count, seed)
    distiller = TiUEDistiller(teacher, teacher_id="encoder-shrink/toy-sd-teacher")
    pipe = distiller.distill(recipe=recipe, prompts=train, eval_prompts=held_out, output_dir=output_dir,
                             resume=resume)
    pipe.training_summary = distiller.summary
    return pipe


def save_toy_tiue(pipe, folder: str | Path, summary: dict) -> Path:
    r"""
    Write a student's `unet/`, `scheduler/` and `training_summary.json` (a temp folder, then renamed): what
    `load_toy_tiue` reads.

    Example:

    ```python
    >>> save_toy_tiue(distill_toy_tiue("k1", "runs/k1"), "students/k1", {"timesteps": [999]})  # doctest: +SKIP
    ```
    """
    folder = Path(folder)
    with atomic_dir(folder) as staging:
        pipe.unet.save_pretrained(staging / "unet")
        pipe.scheduler.save_pretrained(staging / "scheduler")
        (staging / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return folder


def load_toy_tiue(name: str = "k4", path: str | Path | None = None, teacher=None):
    r"""
    The toy TiUE student `name` as a [`TiUEPipeline`] (its UNet and schedule, the teacher's VAE and text encoder),
    from the package or from `path` (a folder `save_toy_tiue` wrote).

    Example:

    ```python
    >>> pipe = load_toy_tiue("k4")  # doctest: +SKIP
    >>> pipe("a red circle above a blue square", output_type="np").images.shape  # doctest: +SKIP
    (1, 32, 32, 3)
    ```
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from encoder_shrink.tiue import TiUEPipeline
    from encoder_shrink.toy.sd_teacher import load_toy_sd_teacher

    _check_name(name)
    folder = Path(path) if path is not None else BUNDLED_TIUE / name
    if not (folder / "unet" / "config.json").is_file():
        raise InputNotFoundError(
            f"{folder} holds no toy TiUE student; re-create it with python -m encoder_shrink.toy.tiue_students "
            f"--students {name} --output {folder.parent}."
        )
    teacher = teacher if teacher is not None else load_toy_sd_teacher()
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    summary = json.loads((folder / "training_summary.json").read_text())
    pipe = TiUEPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                        unet=UNet2DConditionModel.from_pretrained(folder / "unet").eval(), scheduler=scheduler,
                        timesteps=summary["timesteps"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv=None) -> None:
    from diffusers.utils import logging as diffusers_logging

    from encoder_shrink.toy.sd_teacher import BUNDLED_SD_TEACHER, load_toy_sd_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(BUNDLED_TIUE), help="folder for the students (one subfolder each)")
    parser.add_argument("--work-dir", default="toy-tiue-work", help="the runs' checkpoints, for --resume")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--teacher", default=str(BUNDLED_SD_TEACHER), help="toy SD teacher folder")
    parser.add_argument("--max-steps", type=int, help="override the recipe's max_steps")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="override a toy-tiue field (VALUE read as YAML), e.g. --set regression_pairs 16")
    parser.add_argument("--resume", action="store_true", help="continue each run from its newest checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    diffusers_logging.disable_progress_bar()
    overrides = {name: yaml.safe_load(value) for name, value in args.set}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    owned = sorted({"seed", *STUDENTS["k4"], *STUDENTS["k1"]} & set(overrides))
    if owned:  # a K set here would write a K = 1 student into k4/
        parser.error(f"--set {owned[0]}: each student sets its own seed and K; drop it (--students picks them).")
    from encoder_shrink.recipes import RecipeError
    from encoder_shrink.tiue import load_tiue_recipe

    try:  # a bad field or value, refused before the teacher loads
        load_tiue_recipe(RECIPE).with_overrides(**overrides)
    except RecipeError as error:
        parser.error(str(error))
    for name in args.students:
        started = time.time()
        teacher = load_toy_sd_teacher(args.teacher)
        run = Path(args.work_dir) / name
        pipe = distill_toy_tiue(name, run, teacher=teacher, resume=args.resume, **overrides)
        summary = {k: v for k, v in pipe.training_summary.items() if k != "losses"}
        summary["losses"] = {k: {"first": v.get("first"), "last": v.get("last")}
                             for k, v in pipe.training_summary["losses"].items()}
        summary["wall_seconds"] = round(time.time() - started, 1)
        save_toy_tiue(pipe, Path(args.output) / name, summary)
        print(json.dumps({"student": name, "timesteps": summary["timesteps"], "seconds": summary["seconds"],
                          "distance_before": summary["distance_before"]["energy_distance"],
                          "distance_after": summary["distance_after"]["energy_distance"]}))


if __name__ == "__main__":
    main()
