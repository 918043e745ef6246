"""Denoiser fidelity: how closely the denoiser's predictions with student embeddings follow those with the teacher's."""

from __future__ import annotations

import numpy as np
import torch

from encoder_shrink.pipelines import PipelineAdapter


@torch.no_grad()
def denoiser_fidelity(
    adapter: PipelineAdapter,
    student: torch.nn.Module,
    prompts: list[str],
    max_sequence_length: int | None = None,
    num_inference_steps: int = 20,
    resolution: int = 512,
    guidance_scale: float | None = 3.5,
    negative_prompt: str = "",
    batch_size: int = 8,
    seed: int = 1234,
    teacher_rows=None,
) -> dict:
    r"""
    Relative MSE between the denoiser's predictions with student and with teacher embeddings along held-out teacher
    trajectories: `sum ||pred_student - pred_teacher||^2 / sum ||pred_teacher||^2` over prompts and steps (0 is a
    perfect student), plus the same per step. Seeds are fixed, so two students are compared on the same latents.

    `teacher_rows` is an optional callable `texts -> rows` (e.g. a [`TeacherEmbeddingCache`]'s `rows`).

    Example:

    ```python
    >>> denoiser_fidelity(adapter_for(pipe), student, ["a red cube"], resolution=512)["relative_mse"]  # doctest: +SKIP
    0.031
    ```
    """
    length = max_sequence_length or adapter.max_sequence_length
    teacher_rows = teacher_rows or (lambda texts: adapter.encode_teacher(texts, length))
    was_training = student.training
    student.eval()
    error = np.zeros(num_inference_steps)
    energy = np.zeros(num_inference_steps)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = adapter.encoder_texts(batch, negative_prompt)
            rows = teacher_rows(texts)
            input_ids, mask = adapter.tokenize(texts, length)
            student_t5 = student(input_ids, attention_mask=mask)[0]
            generator = torch.Generator("cpu").manual_seed(seed + start)
            trajectory = adapter.start_trajectory(len(batch), resolution, num_inference_steps, generator)
            for i, t in enumerate(trajectory.timesteps):
                teacher = adapter.predict(trajectory, t, rows["t5"], rows, mask, guidance_scale).float()
                predicted = adapter.predict(trajectory, t, student_t5, rows, mask, guidance_scale).float()
                error[i] += (predicted - teacher).pow(2).sum().item()
                energy[i] += teacher.pow(2).sum().item()
                adapter.step(trajectory, teacher.to(trajectory.latents.dtype), t)
    finally:
        student.train(was_training)
    return {
        "relative_mse": float(error.sum() / energy.sum()),
        "per_step": (error / energy).round(6).tolist(),
        "prompts": len(prompts),
        "num_inference_steps": num_inference_steps,
        "resolution": resolution,
        "guidance_scale": guidance_scale,
        "seed": seed,
    }
