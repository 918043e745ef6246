"""The default `encoder-shrink demo`: distil the bundled toy teacher's T5, export int8, evaluate and bench it all."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from encoder_shrink.files import atomic_path, atomic_write_text
from encoder_shrink.toy.teacher import (
    BUNDLED_TEACHER,
    MAX_SEQUENCE_LENGTH,
    NUM_INFERENCE_STEPS,
    load_toy_teacher,
)
from encoder_shrink.toy.world import ATTRIBUTES, sample_prompts

logger = logging.getLogger(__name__)

# Held-out prompts scored by the checker: 40 per kind (single, count, spatial, text) keeps one point of accuracy
# at about 1.6 prompts while the whole evaluation of four encoders stays under a minute on 2 cores.
EVAL_PROMPTS = 160
# Training prompts drawn from the world's train split (balanced over the four kinds).
TRAIN_PROMPTS = 4000
GRID_PROMPTS = 8
VARIANTS = ("teacher", "student", "naive", "student int8")


def demo_prompts(eval_prompts: int = EVAL_PROMPTS, seed: int = 0) -> tuple[list[str], list[str]]:
    """The demo's training prompts (the world's train split) and held-out evaluation prompts, as text."""
    train = [p.text for p in sample_prompts(TRAIN_PROMPTS, "train", seed=seed)]
    held_out = [p.text for p in sample_prompts(eval_prompts, "heldout", seed=seed + 1)]
    return train, held_out


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_toy_demo(output_dir: str | Path, teacher: str | Path | None = None, steps: int | None = None,
                 eval_prompts: int = EVAL_PROMPTS, bench: bool = True, seed: int = 0) -> dict:
    r"""
    On the bundled toy teacher (a `FluxPipeline`): distil its T5 into a >= 4x smaller student with the vision-based
    loss and with the naive embedding loss (recipe `toy`), export the vision student to int8 ONNX, score teacher and
    students with the toy checker on held-out prompts (plus denoiser fidelity and PSNR), bench the encoders, and write
    `results.json`, `report.md` and `grid.png` (teacher | student | naive | int8 student, same prompts and seeds).

    Example:

    ```python
    >>> results = run_toy_demo("encoder-shrink-demo")  # doctest: +SKIP
    >>> results["targets"]["student keeps >= 90% of the teacher's accuracy"]  # doctest: +SKIP
    True
    ```
    """
    from encoder_shrink.evaluation import evaluate
    from encoder_shrink.exporters import export_onnx, load_encoder, load_report
    from encoder_shrink.shrinker import EncoderShrinker

    output_dir = Path(output_dir)
    teacher_dir = Path(teacher) if teacher is not None else BUNDLED_TEACHER
    started = time.time()
    timings = {}
    pipe = load_toy_teacher(teacher_dir)  # a teacher that cannot load is refused before anything is written
    output_dir.mkdir(parents=True, exist_ok=True)
    train, held_out = demo_prompts(eval_prompts, seed)
    overrides = {"max_steps": steps} if steps else {}

    students, training = {}, {}
    # The student follows the recipe as written (its stages' losses); the naive baseline is the same recipe, same
    # steps and prompts, with the embedding loss in every stage.
    for name, loss in (("student", None), ("naive", "embedding")):
        tick = time.time()
        shrinker = EncoderShrinker(pipe, teacher_id="encoder-shrink/toy-teacher")
        students[name] = shrinker.distill(recipe="toy", prompts=train, eval_prompts=held_out[:16], loss=loss,
                                          output_dir=output_dir / name, overwrite=True, **overrides).eval()
        timings[f"distill {name}"] = round(time.time() - tick, 1)
        recipe = shrinker.summary["recipe"]
        training[name] = [f"{stage['name']}: {stage['loss'] or recipe['loss']} loss, {stage['steps']} steps"
                          for stage in recipe["stages"]]

    tick = time.time()
    # Parity and the denoiser error on the world's own held-out prompts (the default prompts are not toy sentences).
    int8_dir = export_onnx(output_dir / "student" / "student", output_dir / "student-int8", int8="dynamic",
                           pipeline=pipe, prompts=held_out[:16], resolution=32, denoiser_steps=NUM_INFERENCE_STEPS,
                           overwrite=True)
    students["student int8"] = load_encoder(int8_dir)
    timings["export int8"] = round(time.time() - tick, 1)

    tick = time.time()
    evaluation = evaluate(pipe, students, held_out, num_inference_steps=NUM_INFERENCE_STEPS, resolution=32,
                          max_sequence_length=MAX_SEQUENCE_LENGTH, guidance_scale=None, metrics=["checker"],
                          fidelity_prompts=32)
    timings["evaluate"] = round(time.time() - tick, 1)
    images = evaluation.pop("images")

    bench_results = None
    if bench:
        from encoder_shrink.benchmarks import BenchConfig, run_bench

        tick = time.time()
        config = BenchConfig(
            pipeline=str(teacher_dir),
            student=str(output_dir / "student" / "student"),
            backends=["torch", "onnx-int8"],
            dtype="float32",
            seq_len=MAX_SEQUENCE_LENGTH,
            batch=1,
            repeats=20,
            warmup=3,
            pipeline_steps=NUM_INFERENCE_STEPS,
            pipeline_repeats=3,
            resolution=32,
        )
        bench_results = run_bench(config, output_dir / "bench")
        timings["bench"] = round(time.time() - tick, 1)

    teacher_t5 = pipe.text_encoder_2
    accuracy = {"teacher": evaluation["teacher"]["checker"]["overall"],
                **{n: f["checker"]["overall"] for n, f in evaluation["students"].items()}}
    results = {
        "teacher": str(teacher_dir),
        "parameters": {"teacher t5": _parameters(teacher_t5), "student": _parameters(students["student"])},
        "training": training,
        "int8_export": load_report(int8_dir),
        "evaluation": evaluation,
        "accuracy": accuracy,
        "bench": bench_results and {k: bench_results[k] for k in ("encoders", "pipelines", "skipped")},
        "timings_s": timings,
    }
    results["parameters"]["smaller"] = round(results["parameters"]["teacher t5"] / results["parameters"]["student"], 2)
    results["targets"] = {
        "student >= 4x smaller than the teacher's T5": results["parameters"]["smaller"] >= 4,
        "student keeps >= 90% of the teacher's accuracy": accuracy["student"] >= 0.9 * accuracy["teacher"],
        "student beats the naive baseline": accuracy["student"] > accuracy["naive"],
        "int8 student within 2 points of the fp32 student": abs(accuracy["student int8"] - accuracy["student"])
        <= 0.02,
    }
    results["timings_s"]["total"] = round(time.time() - started, 1)
    _save_grid(images, held_out, output_dir / "grid.png")
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(output_dir / "report.md", report(results) + "\n")
    return results


def results_table(results: dict) -> str:
    """Checker accuracy per category, fidelity and PSNR of teacher and students, as a Markdown table."""
    evaluation = results["evaluation"]
    rows = {"teacher": evaluation["teacher"], **evaluation["students"]}
    categories = [a for a in ATTRIBUTES if a in evaluation["teacher"]["checker"]]
    lines = ["| encoder | overall | " + " | ".join(categories) + " | denoiser rel. MSE | PSNR vs teacher (dB) |",
             "|---|---:|" + "---:|" * len(categories) + "---:|---:|"]
    for name, figures in rows.items():
        checker = figures["checker"]
        lines.append(
            f"| {name} | {checker['overall']:.3f} | "
            + " | ".join(f"{checker[c]:.3f}" for c in categories)
            + f" | {figures.get('denoiser_relative_mse', 0):.4g} | {figures.get('psnr_db', float('inf')):.1f} |"
        )
    return "\n".join(lines)


def report(results: dict) -> str:
    params = results["parameters"]
    lines = [
        "# encoder-shrink demo: the toy text-to-image world", "",
        f"Teacher: `{results['teacher']}` (FluxPipeline; T5 {params['teacher t5']:,} parameters). Student: "
        f"{params['student']:,} parameters ({params['smaller']}x smaller). "
        f"{results['evaluation']['prompts']} held-out prompts, same seeds for every encoder, "
        f"{results['evaluation']['num_inference_steps']} steps at {results['evaluation']['resolution']} px.", "",
        *(f"- {name}: recipe `toy`, " + "; ".join(stages) for name, stages in results["training"].items()),
        "", "(The step counts are the recipe's; `--steps` cuts a run short.)", "",
        results_table(results), "",
        *(f"- {target}: {'met' if ok else 'NOT met'}" for target, ok in results["targets"].items()), "",
        f"int8 export parity: cosine {results['int8_export']['parity']['min_cosine']:.4f}, "
        f"size {results['int8_export']['bytes']['onnx'] / 1e6:.2f} MB.", "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_s"].items()),
        "", "![grid](grid.png)",
    ]
    if results.get("bench"):
        lines += ["", "## Bench (`encoder-shrink bench`, each variant in its own process; full tables in bench/)", "",
                  _bench_summary(results["bench"])]
    return "\n".join(lines)


def _bench_summary(bench: dict) -> str:
    lines = ["| variant | weights MB | x smaller | encode median ms | x faster |", "|---|---:|---:|---:|---:|"]
    for name, f in bench["encoders"].items():
        if "error" in f:
            lines.append(f"| {name} | failed: {f['error']} ||||")
            continue
        lines.append(f"| {name} | {f['weights_bytes'] / 1e6:.2f} | {f.get('smaller_than_original', 1):g} | "
                     f"{f['latency']['median_s'] * 1e3:.2f} | {f.get('faster_than_original', 1):g} |")
    for name, f in bench["pipelines"].items():
        if "error" not in f:
            lines.append(f"| {name} (12-step generation) | | | {f['latency']['median_s'] * 1e3:.1f} | "
                         f"{1 / f.get('latency_vs_original', 1):.2f} |")
    return "\n".join(lines)


def _save_grid(images: dict, prompts: list[str], path: Path, cell: int = 96) -> None:
    """Rows: the first prompts (they cycle through the kinds); columns: teacher | student | naive | int8 student."""
    from PIL import Image, ImageDraw

    picks = list(range(min(GRID_PROMPTS, len(prompts))))  # sample_prompts cycles single, count, spatial, text
    label_width = 260
    grid = Image.new("RGB", (label_width + cell * len(VARIANTS), 20 + cell * len(picks)), "white")
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(VARIANTS):
        draw.text((label_width + column * cell + 4, 4), name, fill="black")
    for row, index in enumerate(picks):
        draw.text((4, 20 + row * cell + cell // 2 - 6), prompts[index][:48], fill="black")
        for column, name in enumerate(VARIANTS):
            tile = Image.fromarray(images[name][index]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_width + column * cell, 20 + row * cell))
    with atomic_path(path) as tmp:
        grid.save(tmp)


__all__ = ["demo_prompts", "results_table", "run_toy_demo"]
