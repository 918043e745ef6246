"""Text-encoder distillation: the step-following loop, its losses and the teacher-embedding cache (the run scaffold
it shares with TiUE, checkpoints included, is `encoder_shrink.training`)."""

from typing import TYPE_CHECKING

from encoder_shrink.distill.command import description as _description
from encoder_shrink.lazy import lazy_exports
from encoder_shrink.training.methods import MethodCommand, register_training_method

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

# The method's one registration: its recipe class, build and step (by reference: this package is imported to list the
# CLI's commands, and must not import torch), and its command.
register_training_method(
    "distill",
    recipe_class="encoder_shrink.recipes.recipe:Recipe",
    build="encoder_shrink.distill.loop:build",
    step="encoder_shrink.distill.loop:step",
    summarize="encoder_shrink.distill.loop:summarize",
    command=MethodCommand(
        words=("distill",),
        help="distil a pipeline's T5 encoder into a student (vision-based step-following loss)",
        description=_description,
        default_recipe="flux-t5base",
        default_output="encoder-shrink-student",
        overrides=(("max_steps", int), ("batch_size", int), ("learning_rate", float), ("resolution", int),
                   ("num_inference_steps", int), ("checkpoint_every", int), ("max_sequence_length", int),
                   ("gradient_checkpointing", bool)),
        dtype_help="dtype the pipeline is loaded in (the student trains in fp32 regardless)",
        arguments="encoder_shrink.distill.command:add_arguments",
        recipe_overrides="encoder_shrink.distill.command:recipe_overrides",
        run="encoder_shrink.distill.command:run",
    ),
)
