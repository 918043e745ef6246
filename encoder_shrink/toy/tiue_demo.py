"""`encoder-shrink demo --tiue`: the toy SD teacher against its loop-free TiUE students, on held-out prompts."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.evaluation.metrics import to_uint8
from encoder_shrink.files import atomic_path, atomic_write_text
from encoder_shrink.toy.checker import score
from encoder_shrink.toy.world import ATTRIBUTES, IMAGE_SIZE, KINDS, render, sample_prompts

logger = logging.getLogger(__name__)

# 16 held-out prompts per kind, each drawn with 8 seeds: 512 images per variant, so a point of accuracy is ~5 images,
# and the teacher's 25 x 2 UNet passes for all of them take about a minute on 2 cores.
EVAL_PROMPTS = 64
SEEDS = 8
# Latency per image: the median of this many batch-1 calls after one warm-up call, every variant in this process.
LATENCY_REPEATS = 5
# A pixel is ink (an object or a glyph, not the white background) when its darkest channel is below this (0-255):
# every palette colour has a channel <= 60 and black ink 0, while the background is 255 and its noise stays >= 230.
INK_THRESHOLD = 200
# Images per row block of the grid: the first seeds of each prompt, 2 x 2.
GRID_SEEDS = 4
TEACHER, TEACHER_FEW, TIUE, ONE_STEP, PROPAGATION = (
    "teacher 25 steps", "teacher 4 steps", "TiUE K=4", "one-step K=1", "encoder propagation")
VARIANTS = (TEACHER, TEACHER_FEW, TIUE, ONE_STEP, PROPAGATION)


def diversity(images: np.ndarray, seeds: int) -> dict:
    r"""
    How much the images of one prompt differ across its seeds, averaged over prompts (`images`: prompt-major,
    `seeds` consecutive images per prompt, uint8 N x H x W x 3):

    - `appearance`: the mean over pairs of seeds of the RMS pixel difference of their images (0-1 per channel): what
      changes at all, where things are and how they look;
    - `position`: the RMS distance in pixels of each image's ink centroid (the mean position of its non-background
      pixels) from the prompt's mean centroid: where things are, alone. The toy world varies only in layout, so this
      is the headline; images without ink are left out, and prompts with fewer than two inked images
      (`position_prompts` counts the rest).

    Example:

    ```python
    >>> from encoder_shrink.toy.world import render
    >>> same = np.stack([render("a red circle", seed=0)] * 4)
    >>> diversity(same, seeds=4)
    {'appearance': 0.0, 'position': 0.0, 'position_prompts': 1}
    ```
    """
    pixels = images.astype(np.float64) / 255.0
    groups = pixels.reshape(-1, seeds, *pixels.shape[1:])
    appearance, position = [], []
    ys, xs = np.mgrid[0:images.shape[1], 0:images.shape[2]] + 0.5
    for group in groups:
        flat = group.reshape(seeds, -1)
        pairs = [np.sqrt(np.mean((flat[i] - flat[j]) ** 2)) for i in range(seeds) for j in range(i + 1, seeds)]
        appearance.append(float(np.mean(pairs)))
        ink = group.min(-1) * 255.0 < INK_THRESHOLD
        centroids = np.array([(xs[m].mean(), ys[m].mean()) for m in ink if m.any()])
        if len(centroids) > 1:
            position.append(float(np.sqrt(((centroids - centroids.mean(0)) ** 2).sum(1).mean())))
    return {"appearance": float(np.mean(appearance)), "position": float(np.mean(position)) if position else 0.0,
            "position_prompts": len(position)}


def _samplers(teacher, k4, k1, guidance_scale: float, steps: int) -> tuple[dict, list[int]]:
    """Each variant as `draw(prompts, generators, output_type)`, same noise for the same generator seeds; and the
    encoder propagation's timesteps."""
    from encoder_shrink.tiue import TiUEPipeline
    from encoder_shrink.tiue.distiller import sd_ddim_scheduler

    size = dict(height=IMAGE_SIZE, width=IMAGE_SIZE)
    ddim = sd_ddim_scheduler(teacher.scheduler)
    ddim.set_timesteps(steps)
    # Training-free encoder propagation: the teacher's own UNet, its encoder once on x_T, its decoder at every one of
    # the 25 steps (the decoder reads the encoder's features, not x_t, so the steps run in one batch), with CFG.
    propagation = TiUEPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                               unet=teacher.unet, scheduler=sd_ddim_scheduler(teacher.scheduler),
                               timesteps=ddim.timesteps.tolist())
    propagation.set_progress_bar_config(disable=True)

    def sd(num_steps):
        return lambda prompts, generators, output_type: teacher(
            prompt=prompts, num_inference_steps=num_steps, guidance_scale=guidance_scale, generator=generators,
            output_type=output_type, **size).images

    def loop_free(pipe, scale=None):
        return lambda prompts, generators, output_type: pipe(
            prompts, generator=generators, guidance_scale=scale, output_type=output_type, **size).images

    return {TEACHER: sd(steps), TEACHER_FEW: sd(len(k4.timesteps)), TIUE: loop_free(k4), ONE_STEP: loop_free(k1),
            PROPAGATION: loop_free(propagation, guidance_scale)}, list(propagation.timesteps)


def _draw(draw, prompts: list[str], seeds: list[int], batch_size: int = 32) -> np.ndarray:
    images = []
    for start in range(0, len(prompts), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start:start + batch_size]]
        out = draw(prompts[start:start + batch_size], generators, "np")
        images.append(to_uint8(out))
    return np.concatenate(images)


def unet_flops(draw, prompt: str) -> int:
    r"""
    FLOPs of one image's UNet work: the whole call (latent output, no VAE) less the text encoder's share, counted by
    `FlopCounterMode` with attention on SDPA's math kernel (the CPU flash kernel has no FLOP formula, so its QK and
    AV products would go uncounted).

    Example:

    ```python
    >>> unet_flops(lambda p, g, o: pipe(p, generator=g, output_type=o), "a red circle")  # doctest: +SKIP
    10362000000
    ```
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        draw([prompt], [torch.Generator().manual_seed(0)], "latent")
    counts = counter.get_flop_counts()
    text = sum(counts.get("CLIPTextModel", {}).values())
    return int(counter.get_total_flops() - text)


def _latency(draw, prompt: str, repeats: int = LATENCY_REPEATS) -> float:
    """Median seconds of one batch-1 call, prompt to image (text encoder, UNet work, VAE), after a warm-up call."""
    times = []
    for index in range(repeats + 1):
        tick = time.perf_counter()
        draw([prompt], [torch.Generator().manual_seed(index)], "np")
        times.append(time.perf_counter() - tick)
    return statistics.median(times[1:])


def run_tiue_demo(output_dir: str | Path, teacher: str | Path | None = None, students: str | Path | None = None,
                  eval_prompts: int = EVAL_PROMPTS, seeds: int = SEEDS, latency_repeats: int = LATENCY_REPEATS,
                  seed: int = 0) -> dict:
    r"""
    On the bundled toy SD teacher and its TiUE students: draw `eval_prompts` held-out prompts with `seeds` seeds each
    (the same noise for every variant) with the teacher at 25 DDIM steps with CFG, the teacher at 4 steps, the TiUE
    student (K = 4), the one-step student (K = 1) and training-free encoder propagation on the teacher; score checker
    accuracy per category, diversity across seeds, UNet FLOPs and CPU latency per image; write `results.json`,
    `report.md` and `grid.png`.

    Example:

    ```python
    >>> results = run_tiue_demo("encoder-shrink-tiue-demo")  # doctest: +SKIP
    >>> results["targets"]["TiUE keeps >= 90% of the 25-step teacher's accuracy"]  # doctest: +SKIP
    True
    ```
    """
    from tqdm.auto import tqdm

    from encoder_shrink.toy.sd_teacher import BUNDLED_SD_TEACHER, SD_GUIDANCE_SCALE, SD_STEPS, load_toy_sd_teacher
    from encoder_shrink.toy.tiue_students import BUNDLED_TIUE, load_toy_tiue

    if not (isinstance(seeds, int) and seeds >= 2):
        raise InvalidArgumentError(f"seeds must be an integer >= 2 (diversity compares seeds), got {seeds!r}.")
    for name, value in (("eval_prompts", eval_prompts), ("latency_repeats", latency_repeats)):
        if not (isinstance(value, int) and value >= 1):
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}.")
    output_dir = Path(output_dir)
    started = time.time()
    teacher_dir = Path(teacher) if teacher is not None else BUNDLED_SD_TEACHER
    students_dir = Path(students) if students is not None else BUNDLED_TIUE
    pipe = load_toy_sd_teacher(teacher_dir)  # what cannot load is refused before anything is written
    k4 = load_toy_tiue("k4", students_dir / "k4", teacher=pipe)
    k1 = load_toy_tiue("k1", students_dir / "k1", teacher=pipe)
    output_dir.mkdir(parents=True, exist_ok=True)
    samplers, propagation_timesteps = _samplers(pipe, k4, k1, SD_GUIDANCE_SCALE, SD_STEPS)

    held_out = [p.text for p in sample_prompts(eval_prompts, "heldout", seed=seed + 1)]
    prompts = [p for p in held_out for _ in range(seeds)]  # prompt-major: each prompt's seeds side by side
    noise_seeds = [s for _ in held_out for s in range(seed, seed + seeds)]
    renders = np.stack([render(p, seed=s) for p, s in zip(prompts, noise_seeds)])
    results = {"teacher": str(teacher_dir), "students": str(students_dir), "prompts": eval_prompts, "seeds": seeds,
               "guidance_scale": SD_GUIDANCE_SCALE, "variants": {},
               "data": {"diversity": diversity(renders, seeds)}}
    images = {}
    for name in tqdm(VARIANTS, desc="tiue demo", unit="variant"):
        tick = time.time()
        draw = samplers[name]
        images[name] = _draw(draw, prompts, noise_seeds)
        accuracy = score(images[name], prompts)
        results["variants"][name] = {
            "accuracy": {k: accuracy[k] for k in ("overall", *ATTRIBUTES) if k in accuracy},
            "by_kind": {k: accuracy["by_kind"][k]["overall"] for k in KINDS if k in accuracy["by_kind"]},
            "diversity": diversity(images[name], seeds),
            "unet_flops": unet_flops(draw, held_out[0]),
            "latency_s": _latency(draw, held_out[0], latency_repeats),
            "seconds": round(time.time() - tick, 1),
        }
    base = results["variants"][TEACHER]
    for figures in results["variants"].values():
        figures["fewer_flops"] = round(base["unet_flops"] / figures["unet_flops"], 2)
        figures["faster"] = round(base["latency_s"] / figures["latency_s"], 2)
    results["timesteps"] = {TIUE: list(k4.timesteps), ONE_STEP: list(k1.timesteps),
                            PROPAGATION: propagation_timesteps}
    results["targets"] = targets(results["variants"])
    results["seconds"] = round(time.time() - started, 1)
    _save_grid(images, renders, held_out, seeds, output_dir / "grid.png")
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(output_dir / "report.md", _report(results) + "\n")
    return results


def targets(variants: dict) -> dict[str, bool]:
    r"""
    The targets for the TiUE student, each checked on the measured figures (`run_tiue_demo`'s `"variants"`):
    accuracy against the teacher at 25 and at 4 steps and the one-step student, UNet FLOPs, and diversity (position
    spread) against the teacher and the one-step student.

    Example:

    ```python
    >>> targets(results["variants"])["TiUE beats the one-step K=1 student on accuracy"]  # doctest: +SKIP
    True
    ```
    """
    tiue = variants[TIUE]

    def accuracy(name):
        return variants[name]["accuracy"]["overall"]

    def spread(name):
        return variants[name]["diversity"]["position"]

    return {
        "TiUE keeps >= 90% of the 25-step teacher's accuracy": accuracy(TIUE) >= 0.9 * accuracy(TEACHER),
        "TiUE needs >= 10x fewer UNet FLOPs than the 25-step teacher": tiue["fewer_flops"] >= 10,
        "TiUE beats the teacher at 4 steps on accuracy": accuracy(TIUE) > accuracy(TEACHER_FEW),
        "TiUE beats the one-step K=1 student on accuracy": accuracy(TIUE) > accuracy(ONE_STEP),
        "TiUE's diversity >= 90% of the teacher's": spread(TIUE) >= 0.9 * spread(TEACHER),
        "TiUE's diversity is above the one-step student's": spread(TIUE) > spread(ONE_STEP),
    }


def results_table(results: dict) -> str:
    r"""
    Accuracy per category, diversity, UNet FLOPs and latency of every variant, as a Markdown table.

    Example:

    ```python
    >>> print(results_table(run_tiue_demo("out")))  # doctest: +SKIP
    ```
    """
    categories = [a for a in ATTRIBUTES if a in results["variants"][TEACHER]["accuracy"]]
    lines = ["| variant | overall | " + " | ".join(categories) + " | diversity: position spread (px) | appearance "
             "| UNet GFLOPs / image | x fewer | CPU ms / image | x faster |",
             "|---|---:|" + "---:|" * len(categories) + "---:|---:|---:|---:|---:|---:|"]
    for name, f in results["variants"].items():
        lines.append(
            f"| {name} | {f['accuracy']['overall']:.3f} | "
            + " | ".join(f"{f['accuracy'][c]:.3f}" for c in categories)
            + f" | {f['diversity']['position']:.2f} | {f['diversity']['appearance']:.3f} | "
            f"{f['unet_flops'] / 1e9:.3f} | {f['fewer_flops']:g} | {f['latency_s'] * 1e3:.1f} | {f['faster']:g} |"
        )
    data = results["data"]["diversity"]
    lines.append(f"| the world's renders | | {' | ' * (len(categories) - 1)}| {data['position']:.2f} | "
                 f"{data['appearance']:.3f} | | | | |")
    return "\n".join(lines)


def _report(results: dict) -> str:
    """report.md: the setup, the table, how each figure is measured, the targets and the grid."""
    timesteps = results["timesteps"]
    return "\n".join([
        "# encoder-shrink demo --tiue: loop-free sampling on the toy world", "",
        f"Teacher: `{results['teacher']}` (StableDiffusionPipeline: CLIP text encoder, UNet, VAE), DDIM with CFG "
        f"{results['guidance_scale']:g}. Students: `{results['students']}` (recipe `toy-tiue`). "
        f"{results['prompts']} held-out prompts x {results['seeds']} seeds, the same noise for every variant.", "",
        "- teacher 25 steps / 4 steps: DDIM with CFG (two UNet passes per step).",
        f"- TiUE K=4: the student's encoder once, its decoder at {timesteps[TIUE]} in one batch, no CFG.",
        f"- one-step K=1: the same recipe with one timestep ({timesteps[ONE_STEP]}), trained the same way.",
        "- encoder propagation: the teacher's UNet, not fine-tuned: its encoder once, its decoder at every one of the "
        f"{len(timesteps[PROPAGATION])} steps (CFG).",
        "",
        results_table(results), "",
        "Accuracy: the toy checker on every image (prompts x seeds). Diversity, per prompt over its seeds, averaged "
        "over prompts: *position spread* (the targets' figure; the toy world varies only in layout) is the RMS "
        "distance (px) of each image's ink centroid (the mean position of its non-white pixels) from the prompt's "
        "mean; *appearance* is the mean RMS pixel difference (0-1) between two seeds' images, which noise raises too. "
        "The world's renders (its layout jitter) are the reference. Both count every image, right or wrong: read "
        "them beside accuracy.",
        "UNet FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one image's call, less the text encoder's. "
        "Latency: prompt to image at batch 1 (text encoder, UNet work, VAE), median of repeated calls in this "
        "process.", "",
        *(f"- {target}: {'met' if ok else 'NOT met'}" for target, ok in results["targets"].items()), "",
        f"Total {results['seconds']:.0f} s.", "", "![grid](grid.png)",
    ])


def _save_grid(images: dict, renders: np.ndarray, prompts: list[str], seeds: int, path: Path, cell: int = 48) -> None:
    """One row per kind (its first held-out prompt); per column, a variant's first 4 seeds in 2 x 2."""
    from PIL import Image, ImageDraw

    picks = list(range(min(len(KINDS), len(prompts))))  # sample_prompts cycles single, count, spatial, text
    columns = {"world's renders": renders, **images}
    block, label = 2 * cell + 8, 250
    grid = Image.new("RGB", (label + block * len(columns), 24 + block * len(picks)), "white")
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(columns):
        draw.text((label + column * block + 2, 6), name, fill="black")
    for row, index in enumerate(picks):
        draw.text((4, 24 + row * block + block // 2 - 6), prompts[index][:40], fill="black")
        for column, name in enumerate(columns):
            for k in range(min(GRID_SEEDS, seeds)):
                tile = Image.fromarray(columns[name][index * seeds + k]).resize((cell, cell), Image.NEAREST)
                grid.paste(tile, (label + column * block + (k % 2) * cell, 24 + row * block + (k // 2) * cell))
    with atomic_path(path) as tmp:
        grid.save(tmp)


__all__ = ["diversity", "results_table", "run_tiue_demo", "targets", "unet_flops"]
