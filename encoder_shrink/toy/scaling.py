"""The scaling-down pattern on the toy world: students of several sizes, one recipe and budget, accuracy per category.

Run:  python -m encoder_shrink.toy.scaling --output toy-scaling

The paper (arXiv 2503.19897, Figure 1) distils T5-XXL into T5-XL, -large, -base and -small with one recipe and finds
image quality and semantics kept down to T5-base while text rendering is the first ability lost. Here the toy
teacher's 4 x 128 T5 is distilled into students from far below its size up to it: each student T5 is pretrained on
toy prompts like the bundled t5-small (`pretrain_toy_t5`, same steps), then distilled with the `toy` recipe, and its
images on held-out prompts are scored by the checker per category. Two seeds (pretraining and distillation) give the
run-to-run spread. Every finished run is kept under `--output` with its settings, so an interrupted study resumes
where it stopped (a run made with other settings is made again).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from encoder_shrink.files import atomic_write_text, pyplot, save_figure
from encoder_shrink.toy.demo import EVAL_PROMPTS, demo_prompts
from encoder_shrink.toy.teacher import STUDENT_T5, TEACHER_T5
from encoder_shrink.toy.world import ATTRIBUTES

logger = logging.getLogger(__name__)

# Student T5s from 1 layer x 16 wide (1/45 of the teacher's parameters) to the teacher's 4 x 128; 4 heads throughout
# and T5's d_ff = 4 x d_model. "2x64" is the bundled students' t5-small.
SIZES: dict[str, dict] = {
    "1x16": {"d_model": 16, "d_kv": 4, "num_heads": 4, "d_ff": 64, "num_layers": 1},
    "1x32": {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 128, "num_layers": 1},
    "2x64": dict(STUDENT_T5),
    "3x96": {"d_model": 96, "d_kv": 24, "num_heads": 4, "d_ff": 384, "num_layers": 3},
    "4x128": dict(TEACHER_T5),
}
# Pretraining steps of every student T5: the bundled t5-small's (python -m encoder_shrink.toy.pretrain_t5).
PRETRAIN_STEPS = 1500
# An ability counts as kept while a student's accuracy on it is at least this fraction of the teacher's.
KEPT = 0.9


@torch.no_grad()
def checker_scores(pipe, encoder, prompts: list[str]) -> dict:
    r"""
    The toy checker's figures (per category, `overall`) for `pipe` drawing `prompts` (seeds 0..N-1) with `encoder` in
    its T5 slot (`None`: the teacher's own), the pipeline left as it was.

    Example:

    ```python
    >>> checker_scores(load_toy_teacher(), None, ["a red circle"])["overall"]  # doctest: +SKIP
    1.0
    ```
    """
    from encoder_shrink.compat import swap_text_encoder
    from encoder_shrink.evaluation import score_images
    from encoder_shrink.pipelines import adapter_for
    from encoder_shrink.toy.teacher import generate

    was_training = encoder is not None and encoder.training
    slot = adapter_for(pipe).encoder_slot
    replaced = swap_text_encoder(pipe, encoder.eval()) if encoder is not None else None
    try:
        images = generate(pipe, prompts, list(range(len(prompts))))
    finally:
        if replaced is not None:
            pipe.register_modules(**{slot: replaced})
        if was_training:
            encoder.train()
    return score_images(images, prompts, "checker")


def pretrained_t5(size: str, seed: int, directory: Path, steps: int = PRETRAIN_STEPS) -> Path:
    """The folder of the toy T5 of `size` pretrained with `seed` (made once, then reused)."""
    from encoder_shrink.toy.pretrain_t5 import pretrain_toy_t5, save_t5_small

    folder = directory / f"t5-{size}-seed{seed}-steps{steps}"
    if not (folder / "config.json").is_file():
        encoder, summary = pretrain_toy_t5(SIZES[size], steps=steps, seed=seed, progress=tqdm)
        save_t5_small(encoder, folder, {**summary, "torch": torch.__version__})
    return folder


def run_scaling(output_dir: str | Path, sizes: list[str] | None = None, seeds: tuple[int, ...] = (0, 1),
                steps: int | None = None, pretrain_steps: int = PRETRAIN_STEPS,
                eval_prompts: int = EVAL_PROMPTS, teacher: str | Path | None = None) -> dict:
    r"""
    Distil the toy teacher into students of `sizes` (keys of `SIZES`) with the `toy` recipe, once per seed, score each
    with the checker on held-out prompts, and write `results.json`, `report.md` and `scaling.png` to `output_dir`.
    `steps` shortens the recipe (a smoke run); runs finished in `output_dir` with the same settings are reused.

    Example:

    ```python
    >>> results = run_scaling("toy-scaling")  # doctest: +SKIP
    >>> results["first_lost"]  # doctest: +SKIP
    'text'
    ```
    """
    from encoder_shrink.errors import InvalidArgumentError
    from encoder_shrink.shrinker import EncoderShrinker
    from encoder_shrink.toy.teacher import load_toy_teacher

    sizes = list(sizes or SIZES)
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise InvalidArgumentError(f"unknown student sizes {unknown}; choose from {', '.join(SIZES)}.")
    if not seeds:
        raise InvalidArgumentError("run_scaling needs at least one seed, e.g. seeds=(0, 1).")
    output_dir = Path(output_dir)
    (output_dir / "runs").mkdir(parents=True, exist_ok=True)
    pipe = load_toy_teacher(teacher)
    train, held_out = demo_prompts(eval_prompts)  # the demo's: the same for every student
    teacher_scores = checker_scores(pipe, None, held_out)
    teacher_parameters = sum(p.numel() for p in pipe.text_encoder_2.parameters())
    overrides = {"max_steps": steps} if steps else {}
    # A kept run is reused only if it was made with these settings; otherwise it is made again.
    settings = {"steps": steps, "pretrain_steps": pretrain_steps, "eval_prompts": len(held_out)}
    runs = []
    for size in sizes:
        for seed in seeds:
            record = output_dir / "runs" / f"{size}-seed{seed}.json"
            if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
                runs.append(json.loads(record.read_text()))
                continue
            tick = time.time()
            t5 = pretrained_t5(size, seed, output_dir / "pretrained", pretrain_steps)
            pretrain_s = time.time() - tick
            tick = time.time()
            shrinker = EncoderShrinker(pipe, teacher_id="encoder-shrink/toy-teacher")
            student = shrinker.distill(recipe="toy", prompts=train, eval_prompts=held_out[:16], student_t5=str(t5),
                                       seed=seed, **overrides)
            run = {"size": size, "seed": seed, "t5": SIZES[size], "settings": settings,
                   "parameters": sum(p.numel() for p in student.parameters()),
                   "distill_s": round(time.time() - tick, 1), "pretrain_s": round(pretrain_s, 1),
                   "denoiser_relative_mse": shrinker.summary["fidelity_after"]["relative_mse"],
                   "checker": checker_scores(pipe, student, held_out)}
            atomic_write_text(record, json.dumps(run, indent=2))
            runs.append(run)
            logger.info("%s seed %d: %d parameters, overall %.3f", size, seed, run["parameters"],
                        run["checker"]["overall"])
    results = summarize(runs, teacher_scores, teacher_parameters)
    results.update(recipe="toy", steps=steps or "recipe", eval_prompts=len(held_out), seeds=list(seeds))
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(output_dir / "report.md", report(results) + "\n")
    save_chart(results, output_dir / "scaling.png")
    return results


def summarize(runs: list[dict], teacher_scores: dict, teacher_parameters: int) -> dict:
    """Per size: mean, min and max over seeds of each category; which category is lost first as students shrink."""
    categories = ["overall"] + [a for a in ATTRIBUTES if a in teacher_scores]
    by_size: dict[str, dict] = {}
    for run in runs:
        entry = by_size.setdefault(run["size"], {"parameters": run["parameters"], "t5": run["t5"], "runs": []})
        entry["runs"].append(run)
    sizes = sorted(by_size, key=lambda s: by_size[s]["parameters"])
    table = {}
    for size in sizes:
        entry = by_size[size]
        figures = {}
        for category in categories:
            values = [r["checker"][category] for r in entry["runs"]]
            figures[category] = {"mean": float(np.mean(values)), "min": float(min(values)),
                                 "max": float(max(values)), "kept": float(np.mean(values)) / teacher_scores[category]
                                 if teacher_scores[category] else None}
        table[size] = {"parameters": entry["parameters"], "t5": entry["t5"], "seeds": len(entry["runs"]),
                       "figures": figures,
                       "denoiser_relative_mse": float(np.mean([r["denoiser_relative_mse"] for r in entry["runs"]]))}
    # An ability is lost at every student whose mean accuracy on it falls below KEPT of the teacher's (a category the
    # teacher never gets right has nothing to lose); the one lost at the largest size (ties: the lower fraction kept
    # there) is lost first.
    lost_at = {}
    for category in categories[1:]:
        below = [s for s in sizes if table[s]["figures"][category]["kept"] is not None
                 and table[s]["figures"][category]["kept"] < KEPT]
        if below:
            lost_at[category] = below
    first_lost = None
    if lost_at:
        first_lost = max(lost_at, key=lambda c: (table[lost_at[c][-1]]["parameters"],
                                                 -table[lost_at[c][-1]]["figures"][c]["kept"]))
    return {"teacher": {"parameters": teacher_parameters, "checker": teacher_scores}, "sizes": table,
            "order": sizes, "lost_at": lost_at, "first_lost": first_lost, "kept_threshold": KEPT}


def results_table(results: dict) -> str:
    """Markdown: one row per student size (mean over seeds, min-max in brackets) and the teacher's row."""
    categories = list(results["sizes"][results["order"][0]]["figures"])
    lines = ["| student T5 | parameters | " + " | ".join(categories) + " |",
             "|---|---:|" + "---:|" * len(categories)]
    for size in results["order"]:
        row = results["sizes"][size]
        cells = [f"{f['mean']:.3f} ({f['min']:.2f}-{f['max']:.2f})" for f in row["figures"].values()]
        lines.append(f"| {size} | {row['parameters']:,} | " + " | ".join(cells) + " |")
    teacher = results["teacher"]
    lines.append(f"| teacher (4x128 T5) | {teacher['parameters']:,} | "
                 + " | ".join(f"{teacher['checker'][c]:.3f}" for c in categories) + " |")
    return "\n".join(lines)


def conclusion(results: dict) -> str:
    """One plain sentence: which ability is lost first as the student shrinks, and whether it is text."""
    first, lost_at = results["first_lost"], results["lost_at"]
    threshold = f"{results['kept_threshold']:.0%}"
    if first is None:
        return f"No ability falls below {threshold} of the teacher's accuracy at any student size here."
    where = lambda c: f"{c} at {', '.join(reversed(lost_at[c]))}"  # noqa: E731
    others = "; ".join(where(c) for c in lost_at if c != first) or "no other ability"
    verdict = ("Text is the first ability lost here, as the paper found."
               if first == "text" else f"Text is not the first ability lost here ({first} is), unlike the paper.")
    return (f"{verdict} Below {threshold} of the teacher's accuracy (mean over seeds): {where(first)}; "
            f"{others}.")


def report(results: dict) -> str:
    return "\n".join([
        "# The scaling-down pattern on the toy world", "",
        f"Students distilled from the toy teacher's T5 with the `toy` recipe ({results['steps']} steps), each student "
        f"T5 pretrained on toy prompts first; checker accuracy on {results['eval_prompts']} held-out prompts; mean "
        f"over seeds {results['seeds']}, min-max in brackets.", "",
        results_table(results), "", conclusion(results), "", "![scaling](scaling.png)",
    ])


def save_chart(results: dict, path: Path) -> None:
    """Accuracy per category against student parameters (log scale), the seeds' range shaded, the teacher dashed."""
    plt = pyplot()

    order = results["order"]
    parameters = [results["sizes"][s]["parameters"] for s in order]
    categories = list(results["sizes"][order[0]]["figures"])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, category in enumerate(categories):
        colour = f"C{index}"
        figures = [results["sizes"][s]["figures"][category] for s in order]
        axis.plot(parameters, [f["mean"] for f in figures], "o-", color=colour, label=category,
                  linewidth=2.5 if category == "overall" else 1.5)
        axis.fill_between(parameters, [f["min"] for f in figures], [f["max"] for f in figures], color=colour,
                          alpha=0.15)
        axis.axhline(results["teacher"]["checker"][category], color=colour, linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_xticks(parameters, [f"{s}\n{p / 1e3:.0f}k" for s, p in zip(order, parameters)])
    axis.minorticks_off()
    axis.set_xlabel("student (T5 layers x width, parameters)")
    axis.set_ylabel("checker accuracy (held-out)")
    axis.set_ylim(0, 1.02)
    axis.set_title("Toy world: accuracy per category vs student size (dotted: teacher)")
    axis.legend(loc="lower right", fontsize=8)
    save_figure(figure, path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="toy-scaling", help="results folder (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, help="cut the recipe to this many steps (smoke runs)")
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS)
    parser.add_argument("--eval-prompts", type=int, default=EVAL_PROMPTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run_scaling(args.output, args.sizes, tuple(args.seeds), args.steps, args.pretrain_steps,
                          args.eval_prompts)
    print(results_table(results))
    print()
    print(conclusion(results))
    print(f"\nWrote {args.output}/results.json, report.md and scaling.png")


if __name__ == "__main__":
    main()
