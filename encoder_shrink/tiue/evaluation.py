"""How close a TiUE student's samples are to its teacher's: the energy distances of latents and images; a metric."""

from __future__ import annotations

import logging

import numpy as np
import torch

from encoder_shrink.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""
    The energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` between two sets of samples (rows, flattened),
    with the within-set means over distinct pairs. It is 0 in expectation when both come from one distribution and
    grows as they part; unlike a Fréchet distance it needs no covariance, so a few dozen samples of 256-d latents do.

    Example:

    ```python
    >>> a = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    >>> energy_distance(a, a + 3) > energy_distance(a, a + 0.1)
    True
    ```
    """
    x, y = x.flatten(1).double(), y.flatten(1).double()

    def within(a: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        return torch.cdist(a, a).sum() / (n * (n - 1)) if n > 1 else a.new_zeros(())

    return float(2 * torch.cdist(x, y).mean() - within(x) - within(y))


def _decoded(pipe, latents: torch.Tensor) -> torch.Tensor:
    """`latents` decoded as `pipe` decodes them (its VAE, its image processor) to pixels in [0, 1], N x H x W x C."""
    vae = pipe.vae
    pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pt").float().cpu().permute(0, 2, 3, 1)


def _latent_shape(pipe, images_per_prompt: int, resolution: int | None) -> tuple[int, ...]:
    """The z_T shape of one prompt's `images_per_prompt` samples at `resolution` (default: the UNet's)."""
    scale = pipe.vae_scale_factor
    size = resolution or pipe.unet.config.sample_size * scale
    return images_per_prompt, pipe.unet.config.in_channels, size // scale, size // scale


def _noise(pipe, images_per_prompt: int, resolution: int | None, seed: int, index: int) -> torch.Tensor:
    """The seeded noise of the `index`-th prompt, on `pipe`'s device: the same for the teacher and the student."""
    noise = torch.randn(_latent_shape(pipe, images_per_prompt, resolution),
                        generator=torch.Generator().manual_seed(seed + index))
    return noise.to(pipe.device, pipe.unet.dtype)


@torch.no_grad()
def sample_teacher(teacher, prompts: list[str], *, images_per_prompt: int = 4, num_inference_steps: int = 25,
                   guidance_scale: float = 4.5, resolution: int | None = None, seed: int = 0) -> list[torch.Tensor]:
    r"""
    The teacher's z_0 latents of `prompts` (one `images_per_prompt` x C x h x w tensor per prompt, on the CPU) from
    [`sample_distance`]'s seeded noise: sample them once and pass them as its `teacher_latents` to measure several
    students (or one before and after training) against the same reference.

    Example:

    ```python
    >>> prompts = ["a red circle"]
    >>> reference = sample_teacher(sd_pipe, prompts, images_per_prompt=8)  # doctest: +SKIP
    >>> sample_distance(sd_pipe, tiue_pipe, prompts, images_per_prompt=8, teacher_latents=reference)  # doctest: +SKIP
    ```
    """
    size = resolution or teacher.unet.config.sample_size * teacher.vae_scale_factor
    return [teacher([prompt] * images_per_prompt, height=size, width=size, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale, output_type="latent",
                    latents=_noise(teacher, images_per_prompt, resolution, seed, index)).images.float().cpu()
            for index, prompt in enumerate(prompts)]


@torch.no_grad()
def sample_distance(teacher, student, prompts: list[str], *, images_per_prompt: int = 4, num_inference_steps: int = 25,
                    guidance_scale: float = 4.5, resolution: int | None = None, seed: int = 0,
                    metric: str | None = None, teacher_latents: list[torch.Tensor] | None = None) -> dict:
    r"""
    Sample the teacher (a [`~diffusers.StableDiffusionPipeline`], DDIM at `num_inference_steps` with CFG) and the
    student (a [`TiUEPipeline`]) on `prompts`, `images_per_prompt` each from the same seeded noise, and compare them:
    - their z_0 latents: the energy distance between the two sets (the student's distribution against the teacher's),
      its mean over prompts (per-prompt distributions), and the mean distance of same-noise pairs;
    - their images (decoded by the student's VAE and image processor, pixels in [0, 1]): the same two energy
      distances. Both distances measure the distribution, diversity included: on the toy world they rank students by
      layout spread, not by the checker's accuracy (BENCHMARKS.md, the TiUE ablation);
    - with `metric` (a registered image metric, `encoder_shrink.evaluation.registered_metrics()`: `"checker"` on the
      toy world, `"clip"`), its headline score of the teacher's and the student's images. On the toy world the
      checker's score is the summary figure nearest the demo's accuracy ranking, and only with enough images (the
      ablation: Spearman near 0 on 8 prompts x 4 seeds, 0.5-0.8 on 64 x 8).

    `teacher_latents` ([`sample_teacher`] with the same prompts and settings: only their count and shapes are
    checked) skips sampling the teacher again.

    Example:

    ```python
    >>> sample_distance(sd_pipe, tiue_pipe, ["a red circle"], metric="checker")["student_score"]  # doctest: +SKIP
    ```
    """
    settings = dict(images_per_prompt=images_per_prompt, resolution=resolution, seed=seed)
    if teacher_latents is None:
        teacher_latents = sample_teacher(teacher, prompts, num_inference_steps=num_inference_steps,
                                         guidance_scale=guidance_scale, **settings)
    expected = _latent_shape(student, images_per_prompt, resolution)
    wrong = [tuple(t.shape) for t in teacher_latents if tuple(t.shape) != expected]
    if len(teacher_latents) != len(prompts) or wrong:
        held = f" of {wrong[0]} latents" if wrong else ""
        raise InvalidArgumentError(
            f"teacher_latents hold {len(teacher_latents)} prompts{held}, not {len(prompts)} of {expected}; sample "
            "them with sample_teacher on the same prompts and settings.")
    teacher_latents = [t.float().cpu() for t in teacher_latents]
    size = resolution or student.unet.config.sample_size * student.vae_scale_factor
    student_latents = [student([prompt] * images_per_prompt, height=size, width=size, output_type="latent",
                               latents=_noise(student, **settings, index=index)).images.float().cpu()
                       for index, prompt in enumerate(prompts)]
    teacher_all, student_all = torch.cat(teacher_latents), torch.cat(student_latents)
    finite = bool(torch.isfinite(student_all).all())

    def distances(teacher_rows: list[torch.Tensor], student_rows: list[torch.Tensor]) -> tuple[float, float]:
        if not finite:
            return float("inf"), float("inf")
        return (energy_distance(torch.cat(teacher_rows), torch.cat(student_rows)),
                float(np.mean([energy_distance(t, s) for t, s in zip(teacher_rows, student_rows, strict=True)])))

    latent, latent_per_prompt = distances(teacher_latents, student_latents)
    result = {
        "energy_distance": latent,
        "per_prompt_energy_distance": latent_per_prompt,
        "paired_l2": float((teacher_all - student_all).flatten(1).norm(dim=1).mean()),
        "teacher_std": float(teacher_all.std()),
        "student_std": float(student_all.std()),
    }
    teacher_images = [_decoded(student, t) for t in teacher_latents]
    student_images = [_decoded(student, s) for s in student_latents] if finite else []
    result["image_energy_distance"], result["per_prompt_image_energy_distance"] = distances(teacher_images,
                                                                                            student_images)
    if metric is not None:
        from encoder_shrink.evaluation.metrics import get_metric, score_images

        headline = get_metric(metric).headline[0]
        repeated = [p for p in prompts for _ in range(images_per_prompt)]
        result.update(metric=metric, metric_figure=headline,
                      teacher_score=float(score_images(torch.cat(teacher_images).numpy(), repeated, metric)[headline]),
                      student_score=float(score_images(torch.cat(student_images).numpy(), repeated, metric)[headline])
                      if finite else float("nan"))
    return {**result, "prompts": len(prompts), "images_per_prompt": images_per_prompt,
            "teacher_steps": num_inference_steps, "guidance_scale": guidance_scale, "resolution": size}
