"""The drop-in demo: tiny pipelines of every registered family get a distilled student, generate, save and reload."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from encoder_shrink.files import atomic_write_text
from encoder_shrink.shrinker import EncoderShrinker
from encoder_shrink.student import load_student
from encoder_shrink.tiny import TINY_FAMILIES, load_tiny_pipeline, tiny_call_kwargs, tiny_pipeline_class

logger = logging.getLogger(__name__)

DEMO_PROMPTS = (
    "two red circles left of a blue square",
    "a cat holding a sign that says 'hello'",
)
# Optimizer steps of the `tiny` recipe per family: 40 trajectories of 4 steps, seconds on 2 CPU cores (the learning
# tests show every family below 0.3x its starting error at this budget).
DISTILL_STEPS = 160


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_drop_in_demo(
    output_dir: str | Path,
    families: tuple[str, ...] = TINY_FAMILIES,
    prompts: tuple[str, ...] = DEMO_PROMPTS,
    seed: int = 0,
) -> dict:
    r"""
    For each pipeline family: save a tiny pipeline as a model folder, distil its T5 into a student (the `tiny`
    recipe, vision-based loss), load the pipeline with the saved student through
    `from_pretrained(..., <slot>=student)`, generate, save the pipeline with the student inside, reload it with
    plain `from_pretrained` and check the images are identical.

    Writes `results.json`, `report.md` and `grid.png` (teacher | student images per family and prompt) to
    `output_dir` and returns the results.

    Example:

    ```python
    >>> results = run_drop_in_demo("encoder-shrink-demo")  # doctest: +SKIP
    >>> results["families"]["flux-dev"]["reload_identical"]
    True
    ```
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"prompts": list(prompts), "seed": seed, "device": "cpu", "dtype": "float32", "families": {}}
    grid_rows = []
    for family in tqdm(families, desc="drop-in demo", unit="pipeline"):
        started = time.perf_counter()
        teacher_dir = output_dir / "pipelines" / family
        teacher_pipe = load_tiny_pipeline(family, teacher_dir, seed=seed)
        shrinker = EncoderShrinker(teacher_pipe, teacher_id=str(teacher_dir))
        adapter = shrinker.adapter
        # The demo owns its output folder: a second demo run replaces the first one's runs.
        student = shrinker.distill(recipe="tiny", output_dir=output_dir / "distill" / family, max_steps=DISTILL_STEPS,
                                   seed=seed, overwrite=True)
        student_dir = output_dir / "distill" / family / "student"

        pipeline_class = tiny_pipeline_class(family)
        student_pipe = pipeline_class.from_pretrained(
            teacher_dir, **{adapter.encoder_slot: load_student(student_dir)}
        )
        for pipe in (teacher_pipe, student_pipe):
            pipe.set_progress_bar_config(disable=True)
        teacher_images = [_picture(teacher_pipe, p, seed) for p in prompts]
        student_images = [_picture(student_pipe, p, seed) for p in prompts]

        saved_dir = output_dir / "pipelines-with-student" / family
        student_pipe.save_pretrained(saved_dir)
        reloaded = pipeline_class.from_pretrained(saved_dir)
        reloaded.set_progress_bar_config(disable=True)
        reloaded_images = [_picture(reloaded, p, seed) for p in prompts]

        teacher_encoder = adapter.teacher
        results["families"][family] = {
            "pipeline": type(teacher_pipe).__name__,
            "slot": adapter.encoder_slot,
            "max_sequence_length": adapter.max_sequence_length,
            "uses_attention_mask": adapter.uses_attention_mask,
            "teacher_parameters": _parameters(teacher_encoder),
            "student_parameters": _parameters(student),
            "teacher_bytes": _bytes_on_disk(teacher_dir / adapter.encoder_slot),
            "student_bytes": _bytes_on_disk(student_dir),
            "distill_steps": shrinker.summary["steps"],
            "relative_mse_before": shrinker.summary["fidelity_before"]["relative_mse"],
            "relative_mse_after": shrinker.summary["fidelity_after"]["relative_mse"],
            "student_class_after_reload": type(getattr(reloaded, adapter.encoder_slot)).__name__,
            "reload_identical": all(np.array_equal(a, b) for a, b in zip(student_images, reloaded_images)),
            "images_finite": bool(all(np.isfinite(i).all() for i in student_images)),
            "seconds": round(time.perf_counter() - started, 2),
        }
        grid_rows.append((family, teacher_images, student_images))
        logger.info("%s: %s", family, results["families"][family])

    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(output_dir / "report.md", _report(results))
    _save_grid(grid_rows, output_dir / "grid.png")
    return results


def results_table(results: dict) -> str:
    """A Markdown table of the demo's per-family figures."""
    lines = [
        "| family | slot | teacher params | student params | student/teacher bytes | held-out rel. MSE before -> "
        "after "
        "| reload identical | finite |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for family, r in results["families"].items():
        ratio = r["student_bytes"] / r["teacher_bytes"]
        lines.append(
            f"| {family} | {r['slot']} | {r['teacher_parameters']:,} | {r['student_parameters']:,} | "
            f"{ratio:.2f} | {r['relative_mse_before']:.3g} -> {r['relative_mse_after']:.3g} | "
            f"{r['reload_identical']} | {r['images_finite']} |"
        )
    return "\n".join(lines)


def _report(results: dict) -> str:
    return (
        "# encoder-shrink demo\n\n"
        f"Tiny random pipelines of {', '.join(results['families'])}, saved as model folders, have their "
        f"T5 distilled into a student half as wide ({DISTILL_STEPS} steps of the `tiny` recipe, vision-based loss); "
        "the student goes into the T5 slot through `from_pretrained`, generates, is saved with the pipeline and "
        "reloaded with plain `from_pretrained`. *Held-out rel. MSE* is the denoiser's relative error with student "
        "instead of teacher embeddings along held-out teacher trajectories (0 = identical). The tiny denoisers are "
        "random, so the images are noise: compare teacher and student columns, not the pictures.\n\n"
        f"Device {results['device']}, dtype {results['dtype']}, seed {results['seed']}, "
        f"prompts: {', '.join(repr(p) for p in results['prompts'])}.\n\n"
        f"{results_table(results)}\n\n![teacher | student](grid.png)\n"
    )


def _picture(pipe, prompt: str, seed: int) -> np.ndarray:
    """The tiny pipeline's image for `prompt` (H x W x 3); a video's first frame; latents (Allegro) as a gray map."""
    from encoder_shrink.evaluation import generated_media

    media = generated_media(pipe(prompt=prompt, **tiny_call_kwargs(pipe, seed=seed)))[0]
    while media.ndim > 3:  # frames: the first
        media = media[0]
    if media.shape[-1] != 3:  # latents (channels first): their first channel, scaled to [0, 1]
        plane = media.reshape(-1, *media.shape[-2:])[0]
        span = float(plane.max() - plane.min()) or 1.0
        media = np.repeat(((plane - plane.min()) / span)[..., None], 3, axis=-1)
    return media


def _save_grid(rows: list, path: Path, cell: int = 96) -> None:
    from PIL import Image, ImageDraw

    label_width, gap = 110, 4
    columns = max(len(t) + len(s) for _, t, s in rows)
    grid = Image.new("RGB", (label_width + columns * (cell + gap), 16 + len(rows) * (cell + gap)), "white")
    draw = ImageDraw.Draw(grid)
    half = columns // 2
    draw.text((label_width, 2), "teacher", fill="black")
    draw.text((label_width + half * (cell + gap), 2), "student (distilled)", fill="black")
    for row, (family, teacher_images, student_images) in enumerate(rows):
        top = 16 + row * (cell + gap)
        draw.text((4, top + cell // 2 - 6), family, fill="black")
        for column, image in enumerate([*teacher_images, *student_images]):
            tile = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_width + column * (cell + gap), top))
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
