"""TiUE (arXiv 2505.21960): loop-free UNet students whose encoder runs once and whose decoder runs K steps at once."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports
from encoder_shrink.training.methods import MethodCommand, register_training_method

__all__ = ["DDIMCombine", "TiUEDistiller", "TiUEPipeline", "TiUERecipe", "TiUESampler", "UNetFeatures", "UNetSplit",
           "available_tiue_recipes", "distance_settings", "energy_distance", "load_tiue_recipe", "sample_distance",
           "sample_teacher"]

# Each name is imported from its module on first use, so importing this package imports none of them.
_EXPORTS = {
    "TiUEDistiller": "encoder_shrink.tiue.distiller",
    "distance_settings": "encoder_shrink.tiue.distiller",
    "energy_distance": "encoder_shrink.tiue.evaluation",
    "sample_distance": "encoder_shrink.tiue.evaluation",
    "sample_teacher": "encoder_shrink.tiue.evaluation",
    "TiUEPipeline": "encoder_shrink.tiue.pipeline",
    "TiUERecipe": "encoder_shrink.tiue.recipe",
    "available_tiue_recipes": "encoder_shrink.tiue.recipe",
    "load_tiue_recipe": "encoder_shrink.tiue.recipe",
    "TiUESampler": "encoder_shrink.tiue.sampler",
    "DDIMCombine": "encoder_shrink.tiue.schedule",
    "UNetFeatures": "encoder_shrink.tiue.split",
    "UNetSplit": "encoder_shrink.tiue.split",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from encoder_shrink.tiue.distiller import TiUEDistiller, distance_settings
    from encoder_shrink.tiue.evaluation import energy_distance, sample_distance, sample_teacher
    from encoder_shrink.tiue.pipeline import TiUEPipeline
    from encoder_shrink.tiue.recipe import TiUERecipe, available_tiue_recipes, load_tiue_recipe
    from encoder_shrink.tiue.sampler import TiUESampler
    from encoder_shrink.tiue.schedule import DDIMCombine
    from encoder_shrink.tiue.split import UNetFeatures, UNetSplit

# The method's one registration (by reference: the CLI imports this package to list its commands, without torch).
register_training_method(
    "tiue",
    recipe_class="encoder_shrink.tiue.recipe:TiUERecipe",
    build="encoder_shrink.tiue.loop:build",
    step="encoder_shrink.tiue.loop:step",
    summarize="encoder_shrink.tiue.loop:summarize",
    recipes="tiue",
    command=MethodCommand(
        words=("tiue", "distill"),
        help="distil a Stable Diffusion pipeline's UNet into a TiUE student",
        description="Distil the UNet of a Stable Diffusion (1.5 / 2.1) pipeline into a TiUE student; write the "
                    "TiUEPipeline folder to OUTPUT/pipeline, checkpoints and training_summary.json.",
        default_recipe="sd21-tiue",
        default_output="encoder-shrink-tiue",
        overrides=(("max_steps", int), ("batch_size", int), ("learning_rate", float), ("lora_learning_rate", float),
                   ("resolution", int), ("checkpoint_every", int), ("gradient_checkpointing", bool),
                   # the remedies for VSD's mode seeking (docs/tiue.md)
                   ("fake_updates", int), ("distill_guidance_scale", float), ("lora_rank", int),
                   ("kl_weight", float), ("regression_weight", float)),
        dtype_help="dtype of the frozen teacher (the student trains in fp32)",
        run="encoder_shrink.tiue.command:run",
    ),
)
