"""Denoiser fidelity: how closely the denoiser's predictions with student embeddings follow the teacher's."""

from __future__ import annotations

import numpy as np
import torch

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.pipelines import PipelineAdapter


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
    num_frames: int | None = None,
) -> dict:
    r"""
    Relative MSE between the denoiser's predictions with student and with teacher embeddings along held-out teacher
    trajectories: `sum ||pred_student - pred_teacher||^2 / sum ||pred_teacher||^2` over prompts and steps (0 is a
    perfect student), plus the same per step. Seeds are fixed, so two students are compared on the same latents.

    `teacher_rows` is an optional callable `texts -> rows` (e.g. a [`TeacherEmbeddingCache`]'s `rows`). To score
    several students, [`denoiser_fidelities`] runs the teacher's trajectory once for all of them.

    Example:

    ```python
    >>> denoiser_fidelity(adapter_for(pipe), student, ["a red cube"], resolution=512)["relative_mse"]  # doctest: +SKIP
    0.031
    ```
    """
    return denoiser_fidelities(adapter, {"student": student}, prompts, max_sequence_length, num_inference_steps,
                               resolution, guidance_scale, negative_prompt, batch_size, seed, teacher_rows,
                               num_frames)["student"]


@torch.no_grad()
def denoiser_fidelities(
    adapter: PipelineAdapter,
    students: dict[str, torch.nn.Module],
    prompts: list[str],
    max_sequence_length: int | None = None,
    num_inference_steps: int = 20,
    resolution: int = 512,
    guidance_scale: float | None = 3.5,
    negative_prompt: str = "",
    batch_size: int = 8,
    seed: int = 1234,
    teacher_rows=None,
    num_frames: int | None = None,
) -> dict[str, dict]:
    r"""
    [`denoiser_fidelity`] of each of `students` (a mapping from name to encoder), on one teacher trajectory per batch:
    the teacher's prediction at each step is computed once and every student is compared with it, so scoring `k`
    students costs `k + 1` denoiser passes per step instead of `2k`. Returns `{name: result}`.

    Example:

    ```python
    >>> students = {"fp32": student, "int8": onnx_student}
    >>> fidelity = denoiser_fidelities(adapter_for(pipe), students, prompts)  # doctest: +SKIP
    >>> fidelity["int8"]["relative_mse"]  # doctest: +SKIP
    0.034
    ```
    """
    if not students:
        raise InvalidArgumentError("denoiser_fidelities got no students; pass a mapping such as {'student': model}.")
    length = max_sequence_length or adapter.max_sequence_length
    teacher_rows = teacher_rows or (lambda texts: adapter.encode_teacher(texts, length))
    modes = {name: student.training for name, student in students.items()}
    for student in students.values():
        student.eval()
    error = {name: np.zeros(num_inference_steps) for name in students}
    energy = np.zeros(num_inference_steps)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = adapter.encoder_texts(batch, negative_prompt)
            rows = teacher_rows(texts)
            input_ids, mask = adapter.tokenize(texts, length)
            encoder_mask = adapter.encoder_mask(mask)
            embeddings = {
                name: student(input_ids, attention_mask=encoder_mask)[0] for name, student in students.items()
            }
            generator = torch.Generator("cpu").manual_seed(seed + start)
            trajectory = adapter.start_trajectory(len(batch), resolution, num_inference_steps, generator,
                                                  num_frames=num_frames, texts=texts)
            for i, t in enumerate(trajectory.timesteps):
                teacher = adapter.predict(trajectory, t, rows["t5"], rows, mask, guidance_scale).float()
                energy[i] += teacher.pow(2).sum().item()
                for name, student_t5 in embeddings.items():
                    predicted = adapter.predict(trajectory, t, student_t5, rows, mask, guidance_scale).float()
                    error[name][i] += (predicted - teacher).pow(2).sum().item()
                adapter.step(trajectory, teacher.to(trajectory.latents.dtype), t)
    finally:
        for name, student in students.items():
            student.train(modes[name])
    return {
        name: {
            "relative_mse": float(error[name].sum() / energy.sum()),
            "per_step": (error[name] / energy).round(6).tolist(),
            "prompts": len(prompts),
            "num_inference_steps": num_inference_steps,
            "resolution": resolution,
            "guidance_scale": guidance_scale,
            "num_frames": num_frames,
            "seed": seed,
        }
        for name in students
    }
