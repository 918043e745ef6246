"""Distillation: the step-following loop and its baseline, the teacher-embedding cache, full-state checkpoints."""

from encoder_shrink.distill.cache import TeacherEmbeddingCache
from encoder_shrink.distill.checkpoint import latest_checkpoint
from encoder_shrink.distill.loop import DistillationDiverged, distill_loop

__all__ = ["DistillationDiverged", "TeacherEmbeddingCache", "distill_loop", "latest_checkpoint"]
