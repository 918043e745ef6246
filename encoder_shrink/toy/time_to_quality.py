"""Time to quality on the toy world: checker accuracy against distillation steps for the vision, align-then-follow and
naive recipes.

Run:  python -m encoder_shrink.toy.time_to_quality --output toy-time-to-quality

The same student (the bundled t5-small and a fresh projector), prompts, seed and number of steps (the `toy`
recipe's) for three ways to train it:

- `vision`: the vision-based step-following loss from the first step (the paper's loss alone);
- `align-then-follow`: the `toy` recipe as written, the embedding loss to place the student, then the vision loss;
- `naive`: the embedding loss (MSE to the teacher's embeddings) throughout, the paper's baseline.

The held-out checker accuracy is measured every `--every` steps (outside the timed training, which is counted from
the end of step 1, after distill's set-up), so the chart tells what a step of each buys and the seconds what it costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from encoder_shrink.files import atomic_write_text, pyplot, save_figure
from encoder_shrink.toy.demo import EVAL_PROMPTS, demo_prompts
from encoder_shrink.toy.scaling import checker_scores
from encoder_shrink.toy.world import ATTRIBUTES

logger = logging.getLogger(__name__)

# Arm -> the loss in every stage (None: the recipe's own stages).
ARMS: dict[str, str | None] = {"vision": "vision", "align-then-follow": None, "naive": "embedding"}
# Checker evaluations per arm: every 75 steps of the recipe's 900 draws each curve from 13 points.
EVERY = 75


def run_time_to_quality(output_dir: str | Path, steps: int | None = None, every: int = EVERY,
                        eval_prompts: int = EVAL_PROMPTS, seed: int = 0, arms: list[str] | None = None,
                        teacher: str | Path | None = None) -> dict:
    r"""
    Train one toy student per arm of `ARMS` (`steps` cuts the `toy` recipe short), scoring it with the checker on
    held-out prompts at step 0 and every `every` steps; write `results.json`, `report.md` and `time_to_quality.png`.
    An arm finished in `output_dir` with the same settings is reused.

    Example:

    ```python
    >>> results = run_time_to_quality("toy-ttq")  # doctest: +SKIP
    >>> results["arms"]["naive"]["curve"][-1]["overall"]  # doctest: +SKIP
    0.5
    ```
    """
    from encoder_shrink.errors import InvalidArgumentError
    from encoder_shrink.recipes import load_recipe
    from encoder_shrink.toy.teacher import load_toy_teacher

    arms = list(arms or ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise InvalidArgumentError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}.")
    if every < 1:
        raise InvalidArgumentError(f"every={every}: evaluate every 1 or more steps.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_toy_teacher(teacher)
    train, held_out = demo_prompts(eval_prompts)
    teacher_scores = checker_scores(pipe, None, held_out)
    overrides = {"max_steps": steps} if steps else {}
    results = {"teacher": teacher_scores, "arms": {}, "eval_prompts": len(held_out), "every": every, "seed": seed}
    # A kept arm is reused only if it was made with these settings; otherwise it is made again.
    settings = {"steps": steps, "every": every, "eval_prompts": len(held_out), "seed": seed}
    for arm in arms:
        record = output_dir / f"{arm}.json"
        if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
            results["arms"][arm] = json.loads(record.read_text())
            continue
        entry = {**_train_arm(pipe, ARMS[arm], load_recipe("toy").with_overrides(seed=seed, **overrides), train,
                              held_out, every), "settings": settings}
        atomic_write_text(record, json.dumps(entry, indent=2))
        results["arms"][arm] = entry
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(output_dir / "report.md", report(results) + "\n")
    save_chart(results, output_dir / "time_to_quality.png")
    return results


def _train_arm(pipe, loss: str | None, recipe, train: list[str], held_out: list[str], every: int) -> dict:
    """Distil a student with `loss` in every stage (None: the recipe's), scoring it every `every` steps."""
    from encoder_shrink.shrinker import EncoderShrinker

    shrinker = EncoderShrinker(pipe, teacher_id="encoder-shrink/toy-teacher")
    student = shrinker.build_student(recipe)
    curve = [{"step": 0, "train_s": 0.0, **_figures(checker_scores(pipe, student, held_out))}]
    clock = {"train_s": 0.0, "since": None}

    def measure(step: int, loss_value: float) -> None:
        if clock["since"] is None:  # the clock starts when step 1 ends: before it, distill sets up and measures
            clock["since"] = time.perf_counter()
        if step % every and step != recipe.total_steps:
            return
        clock["train_s"] += time.perf_counter() - clock["since"]
        curve.append({"step": step, "train_s": round(clock["train_s"], 2), "loss": loss_value,
                      **_figures(checker_scores(pipe, student, held_out))})
        clock["since"] = time.perf_counter()  # the evaluation is not training time

    shrinker.distill(recipe=recipe, prompts=train, eval_prompts=held_out[:16], student=student, loss=loss,
                     callback=measure)
    stages = [f"{s['name']}: {s['loss'] or shrinker.summary['recipe']['loss']} x {s['steps']}"
              for s in shrinker.summary["recipe"]["stages"]]
    return {"stages": stages, "curve": curve,
            "denoiser_relative_mse": shrinker.summary["fidelity_after"]["relative_mse"]}


def _figures(scores: dict) -> dict:
    return {k: scores[k] for k in ("overall", *ATTRIBUTES) if k in scores}


def results_table(results: dict) -> str:
    """Markdown: per arm, the accuracy at each quarter of the run and at its end, and its training seconds."""
    lines = ["| arm | stages | " + " | ".join(f"step {p['step']}" for p in _milestones(
        next(iter(results["arms"].values()))["curve"])) + " | end: text | train s | s/step |",
             "|---|---|" + "---:|" * (len(_milestones(next(iter(results["arms"].values()))["curve"])) + 3)]
    for arm, entry in results["arms"].items():
        curve = entry["curve"]
        last = curve[-1]
        lines.append(f"| {arm} | {'; '.join(entry['stages'])} | "
                     + " | ".join(f"{p['overall']:.3f}" for p in _milestones(curve))
                     + f" | {last.get('text', float('nan')):.3f} | {last['train_s']:.0f} | "
                     f"{last['train_s'] / max(last['step'] - 1, 1):.3f} |")  # the clock starts after step 1
    return "\n".join(lines)


def _milestones(curve: list[dict]) -> list[dict]:
    """Step 0, the points nearest each quarter of the run, and the end."""
    end = curve[-1]["step"]
    picks = []
    for target in (0, end / 4, end / 2, 3 * end / 4, end):
        point = min(curve, key=lambda p: abs(p["step"] - target))
        if point not in picks:
            picks.append(point)
    return picks


def report(results: dict) -> str:
    return "\n".join([
        "# Time to quality on the toy world", "",
        f"The same student, prompts and seed ({results['seed']}) trained three ways; held-out checker accuracy "
        f"(overall, {results['eval_prompts']} prompts) every {results['every']} steps. Training seconds exclude the "
        "evaluations.", "", results_table(results), "",
        f"The teacher's own accuracy on these prompts: {results['teacher']['overall']:.3f} overall, "
        f"{results['teacher'].get('text', float('nan')):.3f} on text.", "", "![time to quality](time_to_quality.png)",
    ])


def save_chart(results: dict, path: Path) -> None:
    """Overall accuracy against steps (left) and training seconds (right), one line per arm, the teacher dotted."""
    plt = pyplot()

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for index, (arm, entry) in enumerate(results["arms"].items()):
        curve = entry["curve"]
        for axis, key in zip(axes, ("step", "train_s")):
            axis.plot([p[key] for p in curve], [p["overall"] for p in curve], "o-", color=f"C{index}", label=arm,
                      markersize=3)
            axis.plot([p[key] for p in curve], [p.get("text", float("nan")) for p in curve], ":", color=f"C{index}",
                      linewidth=1)
    for axis, label in zip(axes, ("distillation steps", "training seconds (2 CPU cores)")):
        axis.axhline(results["teacher"]["overall"], color="black", linestyle="--", linewidth=1, label="teacher")
        axis.set_xlabel(label)
        axis.set_ylim(0, 1.02)
    axes[0].set_ylabel("held-out checker accuracy (solid: overall, dotted: text)")
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle("Toy world: what a step of each recipe buys")
    save_figure(figure, path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="toy-time-to-quality", help="results folder (default: %(default)s)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--steps", type=int, help="cut the recipe to this many steps (smoke runs)")
    parser.add_argument("--every", type=int, default=EVERY, help="evaluate every N steps (default: %(default)s)")
    parser.add_argument("--eval-prompts", type=int, default=EVAL_PROMPTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run_time_to_quality(args.output, args.steps, args.every, args.eval_prompts, args.seed, args.arms)
    print(results_table(results))
    print(f"\nWrote {args.output}/results.json, report.md and time_to_quality.png")


if __name__ == "__main__":
    main()
