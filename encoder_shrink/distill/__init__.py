"""Distillation: the step-following loop, its losses, the teacher-embedding cache, full-state checkpoints."""

from encoder_shrink.distill.cache import TeacherEmbeddingCache
from encoder_shrink.distill.checkpoint import latest_checkpoint
from encoder_shrink.distill.loop import DistillationDiverged, distill_loop
from encoder_shrink.distill.losses import (
    DistillationLoss,
    LossInputs,
    get_loss,
    register_loss,
    registered_losses,
)

__all__ = [
    "DistillationDiverged",
    "DistillationLoss",
    "LossInputs",
    "TeacherEmbeddingCache",
    "distill_loop",
    "get_loss",
    "latest_checkpoint",
    "register_loss",
    "registered_losses",
]
