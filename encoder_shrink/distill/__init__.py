"""Text-encoder distillation: the step-following loop, its losses and the teacher-embedding cache (the run scaffold
it shares with TiUE, checkpoints included, is `encoder_shrink.training`)."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports

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

# Each name is imported from its module on first use, so importing this package imports none of them.
_EXPORTS = {
    "TeacherEmbeddingCache": "encoder_shrink.distill.cache",
    "latest_checkpoint": "encoder_shrink.training.checkpoint",
    "DistillationDiverged": "encoder_shrink.training.run",
    "distill_loop": "encoder_shrink.distill.loop",
    "DistillationLoss": "encoder_shrink.distill.losses",
    "LossInputs": "encoder_shrink.distill.losses",
    "get_loss": "encoder_shrink.distill.losses",
    "register_loss": "encoder_shrink.distill.losses",
    "registered_losses": "encoder_shrink.distill.losses",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from encoder_shrink.distill.cache import TeacherEmbeddingCache
    from encoder_shrink.distill.loop import distill_loop
    from encoder_shrink.distill.losses import DistillationLoss, LossInputs, get_loss, register_loss, registered_losses
    from encoder_shrink.training.checkpoint import latest_checkpoint
    from encoder_shrink.training.run import DistillationDiverged
