"""evaluate: how well students stand in for a pipeline's teacher (denoiser fidelity, PSNR, registered metrics)."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from encoder_shrink.compat import check_compatible, swap_text_encoder
from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.evaluation.metrics import (
    check_available,
    check_prompts,
    metric_config,
    metric_of,
    score_images,
    to_uint8,
)
from encoder_shrink.fidelity import denoiser_fidelities
from encoder_shrink.pipelines import adapter_for

logger = logging.getLogger(__name__)


def generated_media(output) -> np.ndarray:
    """The images (image pipelines) or frames (video pipelines) of a pipeline call's output, as a numpy array."""
    media = output.images if hasattr(output, "images") else output.frames
    return media.float().cpu().numpy() if isinstance(media, torch.Tensor) else np.asarray(media)


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int, resolution: int,
                    max_sequence_length: int | None = None, batch_size: int = 16, **call_kwargs) -> np.ndarray:
    r"""
    `uint8` images (N x H x W x 3; videos: N x F x H x W x 3, frame count from `call_kwargs`) from `pipe`, one seed per
    prompt, so two encoders are compared on the same noise.

    Example:

    ```python
    >>> images = generate_images(pipe, ["a red circle"], [0], num_inference_steps=12, resolution=32)  # doctest: +SKIP
    >>> images.shape  # doctest: +SKIP
    (1, 32, 32, 3)
    ```
    """
    if len(prompts) != len(seeds):
        raise InvalidArgumentError(f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt.")
    if max_sequence_length and "max_sequence_length" in inspect.signature(pipe.__call__).parameters:
        call_kwargs["max_sequence_length"] = max_sequence_length
    images = []
    for start in range(0, len(prompts), batch_size):
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        out = generated_media(pipe(prompt=list(prompts[start:start + batch_size]),
                                   num_inference_steps=num_inference_steps, height=resolution, width=resolution,
                                   generator=generators, output_type="np", **call_kwargs))
        images.append(to_uint8(np.clip(out, 0, 1)))
    return np.concatenate(images)


def psnr(reference: np.ndarray, images: np.ndarray) -> float:
    """Mean PSNR (dB, 8-bit) of `images` against `reference`, image by image; identical images count as 100 dB."""
    errors = ((reference.astype(np.float64) - images.astype(np.float64)) ** 2).reshape(len(images), -1).mean(1)
    values = np.where(errors == 0, 100.0, 10 * np.log10(255.0**2 / np.maximum(errors, 1e-12)))
    return float(values.mean())


def default_guidance(pipe) -> float | None:
    r"""
    The guidance scale `pipe.__call__` applies when none is given (its signature's default), or `None` for a family
    without guidance (FLUX-schnell): what `evaluate` and `encoder-shrink eval` use unless told otherwise.

    Example:

    ```python
    >>> default_guidance(flux_dev_pipe)  # doctest: +SKIP
    3.5
    ```
    """
    import inspect

    adapter = adapter_for(pipe)
    if adapter.guidance is None:
        return None
    parameters = inspect.signature(type(pipe).__call__).parameters
    names = [name for name in adapter.guidance_call_kwargs(1.0) if name in parameters]
    defaults = [parameters[name].default for name in names if isinstance(parameters[name].default, (int, float))]
    if not defaults:
        raise InvalidArgumentError(f"{type(pipe).__name__}.__call__ has no default guidance scale; pass "
                                   "guidance_scale=.")
    return float(defaults[0])


def evaluate(
    pipe,
    students: dict,
    prompts: list[str],
    seeds: list[int] | None = None,
    num_inference_steps: int = 20,
    resolution: int = 512,
    max_sequence_length: int | None = None,
    guidance_scale: float | None = None,
    metrics=(),
    fidelity_prompts: int | None = None,
    call_kwargs: dict | None = None,
) -> dict:
    r"""
    Compare students (torch, ONNX or TensorRT encoders) with the pipeline's own T5 on the same prompts and seeds:

    - `denoiser_relative_mse`: the denoiser's predictions with student vs teacher embeddings along teacher
      trajectories (0 is perfect; [`denoiser_fidelity`]);
    - `psnr_db`: the final images against the teacher's;
    - each of `metrics` (registered metric names or their configs: `"checker"`, the toy world's checker; `"ocr"`,
      text rendering; `CLIPScoreConfig(clip=PATH)`, CLIP score; `registered_metrics()` lists them) on the teacher's
      and each student's images, under the metric's name.

    Returns `{"teacher": {...}, "students": {name: {...}}, "images": {name: uint8 array}}`.

    Example:

    ```python
    >>> results = evaluate(pipe, {"student": student}, prompts, resolution=32, metrics=["checker"])  # doctest: +SKIP
    >>> results["students"]["student"]["checker"]["overall"]  # doctest: +SKIP
    0.91
    ```
    """
    # Configs first, so that a metric that cannot run (no --clip, no OCR package, no quoted text for OCR) fails before
    # any image is drawn.
    metrics = [metric_config(m) for m in ([metrics] if isinstance(metrics, str) else metrics)]
    for config in metrics:
        check_available(config)
        check_prompts(config, prompts)
    names = [metric_of(config).name for config in metrics]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"metrics {names} name one metric twice; pass each once.")
    adapter = adapter_for(pipe)
    teacher = adapter.teacher
    for student in students.values():
        check_compatible(pipe, student)
    kwargs = dict(call_kwargs or {})
    if guidance_scale is None:
        guidance_scale = default_guidance(pipe)
    elif adapter.guidance is not None:  # the images are drawn at the guidance the fidelity is measured at
        kwargs = {**adapter.guidance_call_kwargs(guidance_scale), **kwargs}
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    length = max_sequence_length or adapter.max_sequence_length
    generate = lambda: generate_images(pipe, prompts, seeds, num_inference_steps, resolution, length, **kwargs)  # noqa: E731
    images = {"teacher": generate()}
    results = {"prompts": len(prompts), "num_inference_steps": num_inference_steps, "resolution": resolution,
               "max_sequence_length": length, "teacher": {}, "students": {}}
    for name, config in zip(names, metrics):
        results["teacher"][name] = score_images(images["teacher"], prompts, config)
    fidelity_set = prompts[:fidelity_prompts] if fidelity_prompts else prompts
    # One teacher trajectory for every student: the teacher's denoiser passes are not repeated per student.
    fidelities = denoiser_fidelities(adapter, students, fidelity_set, length, num_inference_steps, resolution,
                                     guidance_scale=guidance_scale, seed=seeds[0])
    for name, student in tqdm(students.items(), desc="evaluate", unit="student"):
        fidelity = fidelities[name]
        swap_text_encoder(pipe, student)
        try:
            images[name] = generate()
        finally:
            pipe.register_modules(**{adapter.encoder_slot: teacher})
        figures = {"denoiser_relative_mse": fidelity["relative_mse"], "psnr_db": psnr(images["teacher"], images[name]),
                   "images_finite": bool(np.isfinite(images[name]).all())}
        for metric, config in zip(names, metrics):
            figures[metric] = score_images(images[name], prompts, config)
        results["students"][name] = figures
    results["images"] = images
    return results


__all__ = ["default_guidance", "evaluate", "generate_images", "generated_media", "psnr"]
