"""Distillation losses: the vision-based step-following loss, the naive embedding baseline, and the loss registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from encoder_shrink.errors import WrongModelTypeError
from encoder_shrink.pipelines import PipelineAdapter, Trajectory
from encoder_shrink.registry import Registry

LOSSES: Registry[DistillationLoss] = Registry("loss")


@dataclass
class LossInputs:
    r"""
    What a loss sees at one optimizer step: the student's embeddings of the batch's encoder texts, the teacher's cached
    conditioning rows for the same texts, the tokenizer's attention mask (`adapter.attended(mask)`: the positions the
    denoiser reads), and, for losses that use the denoiser, the teacher trajectory at timestep `t` with the guidance of
    this trajectory.

    `teacher_prediction()` is the frozen denoiser's prediction with the teacher's embeddings (computed once, without
    gradients; the loop advances the trajectory along it), `predict(embeddings)` the same with other embeddings.
    """

    adapter: PipelineAdapter
    student_embeddings: torch.Tensor
    teacher_rows: dict[str, torch.Tensor]
    attention_mask: torch.Tensor | None
    trajectory: Trajectory | None = None
    timestep: torch.Tensor | None = None
    guidance_scale: float | None = None
    _teacher_prediction: torch.Tensor | None = field(default=None, repr=False)

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction on the trajectory's latents with `embeddings` as the encoder's conditioning."""
        return self.adapter.predict(self.trajectory, self.timestep, embeddings, self.teacher_rows,
                                    self.attention_mask, self.guidance_scale)

    def teacher_prediction(self) -> torch.Tensor:
        """The denoiser's prediction with the teacher's embeddings (no gradients, computed once per step)."""
        if self._teacher_prediction is None:
            with torch.no_grad():
                self._teacher_prediction = self.predict(self.teacher_rows["t5"])
        return self._teacher_prediction


class DistillationLoss:
    r"""
    A distillation objective. Subclasses set `name` (what recipes and `--loss` call it), `description` (model cards,
    progress bars) and `uses_denoiser` (whether the loop runs a teacher trajectory for it), implement `__call__`, and
    are registered with [`register_loss`] next to their definition.

    Example:

    ```python
    >>> @register_loss
    ... class CosineLoss(DistillationLoss):  # doctest: +SKIP
    ...     name, description, uses_denoiser = "cosine", "embedding cosine distance", False
    ...     def __call__(self, inputs):
    ...         return 1 - F.cosine_similarity(inputs.student_embeddings, inputs.teacher_rows["t5"], dim=-1).mean()
    ```
    """

    name: ClassVar[str]
    description: ClassVar[str]
    uses_denoiser: ClassVar[bool]

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")


def register_loss(loss: type[DistillationLoss]) -> type[DistillationLoss]:
    """Register a loss class (one instance is used); usable as a class decorator. A taken name raises."""
    for attribute in ("name", "description", "uses_denoiser"):
        if not hasattr(loss, attribute):
            raise WrongModelTypeError(
                f"{loss.__name__} cannot be registered as a loss: it does not set `{attribute}`."
            )
    LOSSES.register(loss.name, loss())
    return loss


def get_loss(name: str) -> DistillationLoss:
    """The registered loss called `name`."""
    return LOSSES.get(name)


def registered_losses() -> list[str]:
    """Names of the registered losses, e.g. `['embedding', 'vision']`."""
    return LOSSES.names()


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE between two embedding batches over the tokens the denoiser attends to (all of them without a mask)."""
    squared = (student.float() - teacher.float()).pow(2)
    if mask is None:
        return squared.mean()
    weights = mask[..., None].to(squared.dtype)
    return (squared * weights).sum() / (weights.sum() * squared.shape[-1])


@register_loss
class VisionLoss(DistillationLoss):
    """The paper's step-following loss: MSE between the frozen denoiser's predictions with student and teacher."""

    name = "vision"
    description = "vision-based step-following"
    uses_denoiser = True

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return F.mse_loss(inputs.predict(inputs.student_embeddings).float(), inputs.teacher_prediction().float())


@register_loss
class EmbeddingLoss(DistillationLoss):
    """The naive baseline: MSE between student and teacher embeddings, over the tokens the denoiser attends to."""

    name = "embedding"
    description = "embedding-MSE (baseline)"
    uses_denoiser = False

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        attended = inputs.adapter.attended(inputs.attention_mask)
        return masked_mse(inputs.student_embeddings, inputs.teacher_rows["t5"], attended)


__all__ = [
    "LOSSES",
    "DistillationLoss",
    "EmbeddingLoss",
    "LossInputs",
    "VisionLoss",
    "get_loss",
    "masked_mse",
    "register_loss",
    "registered_losses",
]
