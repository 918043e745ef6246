"""The TiUE remedies ablation on the toy world: each arm distilled to one budget at K = 4 and 1, scored as the demo.

Run:  python -m encoder_shrink.toy.tiue_ablation --output benchmarks/results/tiue_ablation [--arms today ttur5 ...]

An arm is the paper's recipe (`toy-tiue` with `BASE`: the remedies it ships with turned off) with the overrides of
one remedy (`ARMS`), or several joined with "+" (`ttur5+guidance2`).
Every arm trains the same steps on the same prompts; each (arm, K, seed) row is then scored on the same held-out
prompts and seeds with `demo --tiue`'s metrics: checker accuracy per category and kind, position spread and
appearance, UNet FLOPs, and the training's wall time, beside the training summary's figures (latent and image energy
distances, the checker's score of its own held-out images): does each rank the arms as the checker does? Resumable: a
scored row is kept in OUTPUT/runs/ and not trained again (its summary figures are measured again from its saved
student when the recipe's held-out measure has changed since), and a run killed mid-way continues from its
checkpoints in OUTPUT/work/ (not results: keep it out of version control). Several processes may share one OUTPUT,
each with its own arms (`OMP_NUM_THREADS=1` each on a small machine: the toy UNet's ops are too small for two
threads to pay).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.files import atomic_write_text, pyplot, save_figure, write_results

logger = logging.getLogger(__name__)

# Every arm starts from the paper's recipe, VSD + KL: `toy-tiue` without the two remedies it ships with since this
# ablation chose them (`regress+ttur5`), so the rows stay comparable whatever the bundled recipe carries.
BASE: dict = {"fake_updates": 1, "regression_weight": 0.0}
# The remedies for VSD's mode seeking, each alone (issue 31), as overrides of `BASE`.
ARMS: dict[str, dict] = {
    # the paper's recipe (the students shipped before this ablation)
    "today": {},
    # DMD2's two time-scale update rule (Yin et al. 2024): 5 fake-score updates per student update (SDXL's; SD 1.5: 10)
    "ttur5": {"fake_updates": 5},
    # a lower guidance in the distillation target than the teacher samples with (3.0): guidance 2 lifted accuracy in
    # an earlier probe; DMD2 distils SD 1.5 at 1.75
    "guidance2": {"distill_guidance_scale": 2.0},
    # a stronger fake score: rank 64 over the same targets (the shipped 16)
    "rank64": {"lora_rank": 64, "lora_alpha": 64},
    # the KL term summed over the K x B maps (the paper's), 0.1 as the paper
    "kl-sum": {"kl_reduction": "sum"},
    # DMD's regression on teacher ODE pairs (Yin et al. 2024), DMD's weight 0.25 (there on LPIPS, here latent MSE):
    # 1,024 pairs at the teacher's 25 DDIM steps with CFG, 8 regressed per step
    "regress": {"regression_weight": 0.25},
}
# The two students of every arm: the paper's K = 4, and the one-step ablation (its one timestep at 999).
KS = {4: {"num_steps": 4}, 1: {"num_steps": 1, "timestep_spacing": "trailing"}}
# The training summary's figures (`distance_after`, on its own held-out prompts: toy-tiue's 64 x 8 seeds) whose
# ranking of the students is compared with the demo's accuracy and spread; a distance ranks lower-is-better.
SUMMARY_FIGURES = {"energy_distance": "latent energy distance", "per_prompt_energy_distance": "per-prompt latent",
                   "image_energy_distance": "image energy distance", "per_prompt_image_energy_distance":
                   "per-prompt image", "student_score": "checker score"}
# The demo's held-out evaluation (`encoder_shrink.toy.tiue_demo`): 64 prompts x 8 seeds.
EVAL_PROMPTS = 64
SEEDS = 8


def arm_overrides(arm: str) -> dict:
    r"""
    The recipe overrides of `arm`: one of `ARMS`, or several joined with "+" (later ones win on a shared field).

    Example:

    ```python
    >>> arm_overrides("ttur5+guidance2")
    {'fake_updates': 5, 'distill_guidance_scale': 2.0}
    ```
    """
    overrides: dict = {}
    for part in arm.split("+"):
        if part not in ARMS:
            raise InvalidArgumentError(f"unknown ablation arm {part!r} in {arm!r}; use {', '.join(ARMS)}, joined "
                                       "with '+' for a combination.")
        overrides.update(ARMS[part])
    return overrides


def _scored(draw, prompts: list[str], seeds: list[int], per_prompt: int) -> dict:
    """Checker accuracy (overall, per category, per kind) and diversity of `draw`'s images of `prompts`."""
    from encoder_shrink.toy.checker import score
    from encoder_shrink.toy.tiue_demo import _draw, diversity
    from encoder_shrink.toy.world import ATTRIBUTES, KINDS

    images = _draw(draw, prompts, seeds)
    accuracy = score(images, prompts)
    return {"accuracy": {k: accuracy[k] for k in ("overall", *ATTRIBUTES) if k in accuracy},
            "by_kind": {k: accuracy["by_kind"][k]["overall"] for k in KINDS if k in accuracy["by_kind"]},
            "diversity": diversity(images, per_prompt)}


def _held_out(eval_prompts: int, seeds: int) -> tuple[list[str], list[str], list[int]]:
    """The demo's held-out prompts, each repeated for its seeds (prompt-major), and the noise seeds."""
    from encoder_shrink.toy.world import sample_prompts

    held_out = [p.text for p in sample_prompts(eval_prompts, "heldout", seed=1)]
    return held_out, [p for p in held_out for _ in range(seeds)], [s for _ in held_out for s in range(seeds)]


def _teacher_row(teacher, eval_prompts: int, seeds: int) -> dict:
    """The teacher at 25 DDIM steps and at 4, with CFG, on the held-out prompts: the reference of every arm."""
    from encoder_shrink.toy.sd_teacher import SD_GUIDANCE_SCALE, SD_STEPS
    from encoder_shrink.toy.tiue_demo import unet_flops
    from encoder_shrink.toy.world import IMAGE_SIZE

    held_out, prompts, noise = _held_out(eval_prompts, seeds)
    row = {}
    for name, steps in (("teacher 25 steps", SD_STEPS), ("teacher 4 steps", 4)):
        def draw(p, generators, output_type, _steps=steps):
            return teacher(prompt=p, num_inference_steps=_steps, guidance_scale=SD_GUIDANCE_SCALE,
                           generator=generators, output_type=output_type, height=IMAGE_SIZE, width=IMAGE_SIZE).images

        row[name] = {**_scored(draw, prompts, noise, seeds), "unet_flops": unet_flops(draw, held_out[0])}
    return row


def _student_row(arm: str, k: int, seed: int, teacher, work: Path, common: dict, eval_prompts: int,
                 seeds: int) -> dict:
    """Distil (or resume) the student of `arm` at `k`, then score it on the held-out prompts."""
    from encoder_shrink.toy.tiue_demo import unet_flops
    from encoder_shrink.toy.tiue_students import distill_toy_tiue
    from encoder_shrink.toy.world import IMAGE_SIZE
    from encoder_shrink.training.checkpoint import latest_checkpoint

    overrides = {**BASE, **arm_overrides(arm), **KS[k], **common}
    started = time.time()
    resume = latest_checkpoint(work) is not None
    if not resume and work.exists():  # a run killed before its first checkpoint: nothing to continue from
        shutil.rmtree(work)
    pipe = distill_toy_tiue("k4" if k == 4 else "k1", work, teacher=teacher, resume=resume, seed=seed, **overrides)
    trained = time.time() - started
    summary = pipe.training_summary

    def draw(p, generators, output_type):
        return pipe(p, generator=generators, output_type=output_type, height=IMAGE_SIZE, width=IMAGE_SIZE).images

    held_out, prompts, noise = _held_out(eval_prompts, seeds)
    import torch

    # (train_seconds: this invocation's; a resumed run, steps_this_run < steps, counts only its last part)
    return {"arm": arm, "k": k, "seed": seed, "overrides": overrides, **_scored(draw, prompts, noise, seeds),
            "unet_flops": unet_flops(draw, held_out[0]), "train_seconds": round(trained, 1),
            "threads": torch.get_num_threads(),
            "steps": summary["steps"], "steps_this_run": summary["steps_this_run"],
            **_summary_figures(summary["distance_after"])}


# What a training summary's measure read (the keys of `distance_after` that say so): rows compare only when equal.
SUMMARY_EVAL = ("prompts", "images_per_prompt", "teacher_steps", "guidance_scale", "resolution", "metric")


def _summary_figures(after: dict) -> dict:
    """A training summary's `distance_after` as a row keeps it: `SUMMARY_FIGURES` and how they were measured."""
    return {**{name: after[name] for name in SUMMARY_FIGURES if name in after},
            "summary_eval": {key: after.get(key) for key in SUMMARY_EVAL}}


def _summary_eval(common: dict) -> dict:
    """How today's `toy-tiue` (with `common`) has the training summary measure, as `_summary_figures` records it."""
    from encoder_shrink.tiue import distance_settings, load_tiue_recipe
    from encoder_shrink.toy.tiue_students import RECIPE

    recipe = load_tiue_recipe(RECIPE).with_overrides(**common)
    settings = distance_settings(recipe)
    return {"prompts": recipe.eval_prompt_count, "images_per_prompt": settings["images_per_prompt"],
            "teacher_steps": settings["num_inference_steps"], "guidance_scale": settings["guidance_scale"],
            "resolution": settings["resolution"], "metric": settings["metric"]}


def _remeasured(row: dict, work: Path, teacher, references: dict) -> dict | None:
    """
    `row` with its training-summary figures measured again as its run's summary measures them under today's recipe
    (`distance_settings`, `summary_prompts`) from the student the run saved in `work` (None when it kept none): rows
    trained before the recipe's held-out set changed then compare with new ones. `references` caches the teacher's
    samples per setting.
    """
    from encoder_shrink.tiue import (
        TiUEDistiller,
        TiUEPipeline,
        distance_settings,
        load_tiue_recipe,
        sample_distance,
        sample_teacher,
    )
    from encoder_shrink.tiue.distiller import PIPELINE
    from encoder_shrink.toy.tiue_students import RECIPE, summary_prompts

    folder = work / PIPELINE
    if not (folder / "model_index.json").is_file():
        logger.warning("%s K=%d seed %d was measured on another held-out set and %s keeps no student to measure "
                       "again: its summary figures stay out of the agreement.", row["arm"], row["k"], row["seed"],
                       work)
        return None
    # (rows written before BASE existed carry only their arm's overrides: BASE first, as the run trained)
    recipe = load_tiue_recipe(RECIPE).with_overrides(**{**BASE, **row["overrides"], "seed": row["seed"]})
    settings = distance_settings(recipe)
    prompts = summary_prompts(recipe.eval_prompt_count, row["seed"])
    sampler = TiUEDistiller(teacher).teacher_sampler()
    key = json.dumps([prompts, settings], sort_keys=True)
    if key not in references:
        references[key] = sample_teacher(sampler, prompts, **{k: v for k, v in settings.items() if k != "metric"})
    student = TiUEPipeline.from_pretrained(folder).to(teacher.device)  # where the run measured its summary
    student.set_progress_bar_config(disable=True)
    after = sample_distance(sampler, student, prompts, **settings, teacher_latents=references[key])
    return {**row, **_summary_figures(after), "summary_remeasured": True}


def measure(output: str | Path, arms: list[str], ks: list[int], seeds_of_arm: dict[str, list[int]] | None = None,
            common: dict | None = None, eval_prompts: int = EVAL_PROMPTS, seeds: int = SEEDS,
            teacher: str | Path | None = None) -> dict:
    r"""
    Train and score every (arm, K, seed) not yet in `output`/runs (each row is written when scored), and the
    teacher's reference once; returns every row with the agreement of the summary's figures with the checker. A
    scored row of these jobs whose summary read another held-out set than today's recipe sets (`SUMMARY_EVAL`) is
    measured again from the student its run saved; rows of other arms are left as they are.
    `common` overrides the recipe for every arm (the budget `max_steps`, the distiller's own distance measure).

    Example:

    ```python
    >>> results = measure("tiue-ablation", ["today", "ttur5"], [4, 1])  # doctest: +SKIP
    ```
    """
    from diffusers.utils import logging as diffusers_logging
    from tqdm.auto import tqdm

    from encoder_shrink.toy.sd_teacher import BUNDLED_SD_TEACHER, load_toy_sd_teacher

    for arm in arms:
        arm_overrides(arm)  # an unknown arm is refused before anything trains
    bad = [k for k in ks if k not in KS]
    if bad:
        raise InvalidArgumentError(f"K must be one of {', '.join(map(str, KS))}, got {bad[0]!r}.")
    common = dict(common or {})
    owned = sorted({"seed", *KS[4], *KS[1]} & set(common))
    if owned:
        raise InvalidArgumentError(f"{owned[0]} is set per run (the seeds with --seeds-of, K with --ks), not for "
                                   "every arm; drop it from the common overrides.")
    output = Path(output)
    runs = output / "runs"
    # Rows are comparable only at one budget and one evaluation: a folder keeps the settings it was started with.
    settings = {"common": common, "eval_prompts": eval_prompts, "seeds": seeds}
    kept = output / "settings.json"
    if kept.is_file() and json.loads(kept.read_text()) != json.loads(json.dumps(settings)):
        raise InvalidArgumentError(f"{output} holds an ablation with settings {kept.read_text().strip()}, not "
                                   f"{json.dumps(settings)}; continue it with those, or choose another --output.")
    runs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(kept, json.dumps(settings))
    diffusers_logging.disable_progress_bar()
    pipe = load_toy_sd_teacher(teacher or BUNDLED_SD_TEACHER)
    teacher_file = runs / "teacher.json"
    if not teacher_file.is_file():
        atomic_write_text(teacher_file, json.dumps(_teacher_row(pipe, eval_prompts, seeds), indent=2))
    jobs = [(arm, k, s) for arm in arms for k in ks for s in (seeds_of_arm or {}).get(arm, [0])]
    wanted, references = _summary_eval(common), {}
    for arm, k, seed in tqdm(jobs, desc="tiue ablation", unit="run"):
        row_file = runs / f"{arm}-k{k}-s{seed}.json"
        if row_file.is_file():
            row = json.loads(row_file.read_text())
            if row.get("summary_eval") != wanted:  # scored before the summary's held-out set changed
                row = _remeasured(row, output / "work" / row_file.stem, pipe, references)
                if row is not None:
                    atomic_write_text(row_file, json.dumps(row, indent=2))
            continue
        row = _student_row(arm, k, seed, pipe, output / "work" / f"{arm}-k{k}-s{seed}", common, eval_prompts,
                           seeds)
        atomic_write_text(row_file, json.dumps(row, indent=2))
        logger.info("%s K=%d seed %d: accuracy %.3f, position spread %.2f px", arm, k, seed,
                    row["accuracy"]["overall"], row["diversity"]["position"])
    rows = [json.loads(f.read_text()) for f in sorted(runs.glob("*-k*-s*.json"))]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    # (the summary's figures rank only among rows measured on one held-out set: today's)
    return {"benchmark": "tiue_ablation", "device": device, "common": common, "eval_prompts": eval_prompts,
            "seeds": seeds, "summary_eval": wanted, "teacher": json.loads(teacher_file.read_text()), "rows": rows,
            "agreement": agreement([r for r in rows if r.get("summary_eval") == wanted])}


def agreement(rows: list[dict]) -> dict:
    r"""
    Whether each training-summary figure (`SUMMARY_FIGURES`) ranks the students as the demo's measures do: Spearman's
    rank correlation of the figure (minus a distance) with the checker's overall accuracy and with the position
    spread, per K (1.0: the same order; `None` where either ranking is flat; figures fewer than two rows have are
    left out).

    Example:

    ```python
    >>> agreement([{"k": 4, "energy_distance": 0.1, "accuracy": {"overall": 0.8}, "diversity": {"position": 1.0}},
    ...            {"k": 4, "energy_distance": 0.2, "accuracy": {"overall": 0.7}, "diversity": {"position": 1.5}}])
    {'energy_distance': {'k4': {'accuracy': 1.0, 'spread': -1.0}}}
    ```
    """
    def ranks(values):
        order = np.argsort(np.argsort(values, kind="stable"), kind="stable")
        return order.astype(float)

    def spearman(a, b):
        a, b = ranks(a), ranks(b)
        return None if a.std() == 0 or b.std() == 0 else round(float(np.corrcoef(a, b)[0, 1]), 3)

    result: dict = {}
    for figure in SUMMARY_FIGURES:
        sign = 1 if figure == "student_score" else -1
        for k in sorted({r["k"] for r in rows}, reverse=True):
            group = [r for r in rows if r["k"] == k and r.get(figure) is not None]
            if len(group) < 2:
                continue
            ours = [sign * r[figure] for r in group]
            result.setdefault(figure, {})[f"k{k}"] = {
                "accuracy": spearman(ours, [r["accuracy"]["overall"] for r in group]),
                "spread": spearman(ours, [r["diversity"]["position"] for r in group])}
    return result


def table(results: dict) -> str:
    """The rows (and the teacher's reference) as a Markdown table."""
    teacher, summary_eval = results["teacher"], results["summary_eval"]
    categories = list(teacher["teacher 25 steps"]["accuracy"])
    reference = teacher["teacher 25 steps"]

    def line(name, r, extra):
        return (f"| {name} | {r['accuracy']['overall']:.3f} | "
                + " | ".join(f"{r['accuracy'].get(c, float('nan')):.3f}" for c in categories[1:])
                + f" | {r['diversity']['position']:.2f} | {r['diversity']['appearance']:.3f} | "
                f"{reference['unet_flops'] / r['unet_flops']:.1f} | {extra}")

    lines = [f"TiUE ablation on the toy world: {results['eval_prompts']} held-out prompts x {results['seeds']} seeds; "
             f"checker accuracy, position spread (px) and appearance; beside them the training summary's figures "
             f"(its own {summary_eval['prompts']} held-out prompts x {summary_eval['images_per_prompt']} seeds; "
             f"\"-\": a run measured on another set).", "",
             "| run | overall | " + " | ".join(categories[1:]) + " | position spread | appearance | x fewer UNet "
             "FLOPs | latent energy distance | image energy distance | summary checker score | train s |",
             "|---|" + "---:|" * (len(categories) + 7)]
    for name, r in teacher.items():
        lines.append(line(name, r, "| | | |"))

    def figure(r, name, spec):
        return "-" if r.get("summary_eval") != summary_eval or r.get(name) is None else format(r[name], spec)

    for r in results["rows"]:
        lines.append(line(f"{r['arm']} K={r['k']} seed {r['seed']}", r,
                          f"{figure(r, 'energy_distance', '.4f')} | {figure(r, 'image_energy_distance', '.3f')} | "
                          f"{figure(r, 'student_score', '.3f')} | {r['train_seconds']:.0f} |"))
    lines += ["", "Rank agreement of each training-summary figure with the checker's accuracy and with the position "
              "spread (Spearman over the runs, per K; 1: the same order):", ""]
    for name, by_k in results["agreement"].items():
        lines.append(f"- {SUMMARY_FIGURES[name]}: " + "; ".join(
            f"K={k[1:]} accuracy {v['accuracy']}, spread {v['spread']}" for k, v in by_k.items()))
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    """Accuracy against position spread, one point per run, the teacher's as reference lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, r in results["teacher"].items():
        ax.scatter(r["diversity"]["position"], r["accuracy"]["overall"], marker="*", s=120, label=name)
    for k, marker in ((4, "o"), (1, "s")):
        rows = [r for r in results["rows"] if r["k"] == k]
        ax.scatter([r["diversity"]["position"] for r in rows], [r["accuracy"]["overall"] for r in rows],
                   marker=marker, label=f"K = {k}")
        for r in rows:
            ax.annotate(f"{r['arm']} s{r['seed']}", (r["diversity"]["position"], r["accuracy"]["overall"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("position spread across seeds (px)")
    ax.set_ylabel("checker accuracy (overall)")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/tiue_ablation")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help=f"of {', '.join(ARMS)}; join with '+'")
    parser.add_argument("--ks", nargs="+", type=int, default=list(KS), help="the students' K (4, 1)")
    parser.add_argument("--seeds-of", nargs=2, action="append", default=[], metavar=("ARM", "SEEDS"),
                        help="train ARM with these comma-separated seeds (default: seed 0)")
    parser.add_argument("--max-steps", type=int, help="the budget of every run (default: the recipe's)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="override a toy-tiue field for every arm (VALUE read as YAML), e.g. --set eval_steps 2")
    parser.add_argument("--eval-prompts", type=int, default=EVAL_PROMPTS)
    parser.add_argument("--seeds", type=int, default=SEEDS, help="noise seeds per held-out prompt")
    parser.add_argument("--teacher", help="toy SD teacher folder (default: the bundled one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds_of = {arm: [int(s) for s in seeds.split(",")] for arm, seeds in args.seeds_of}
    common = {name: yaml.safe_load(value) for name, value in args.set}
    if args.max_steps is not None:
        common["max_steps"] = args.max_steps
    results = measure(args.output, args.arms, args.ks, seeds_of, common, args.eval_prompts, args.seeds,
                      args.teacher)
    write_results(args.output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
