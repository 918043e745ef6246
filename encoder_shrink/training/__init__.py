"""The run scaffold both training methods share: set-up, the step driver, one checkpoint format, the method
registry."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports

__all__ = [
    "DistillationDiverged",
    "TrainingRun",
    "TrainingState",
    "latest_checkpoint",
    "make_accelerator",
    "split_held_out",
    "step_seed",
]

# Each name is imported from its module on first use, so importing this package imports none of them.
_EXPORTS = {
    "TrainingState": "encoder_shrink.training.checkpoint",
    "latest_checkpoint": "encoder_shrink.training.checkpoint",
    "DistillationDiverged": "encoder_shrink.training.run",
    "TrainingRun": "encoder_shrink.training.run",
    "step_seed": "encoder_shrink.training.run",
    "make_accelerator": "encoder_shrink.training.setup",
    "split_held_out": "encoder_shrink.training.setup",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from encoder_shrink.training.checkpoint import TrainingState, latest_checkpoint
    from encoder_shrink.training.run import DistillationDiverged, TrainingRun, step_seed
    from encoder_shrink.training.setup import make_accelerator, split_held_out
