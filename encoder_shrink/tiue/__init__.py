"""TiUE (arXiv 2505.21960): loop-free UNet students whose encoder runs once and whose decoder runs K steps at once."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports

__all__ = ["DDIMCombine", "TiUEDistiller", "TiUEPipeline", "TiUERecipe", "TiUESampler", "UNetFeatures", "UNetSplit",
           "available_tiue_recipes", "energy_distance", "load_tiue_recipe", "sample_distance"]

# Each name is imported from its module on first use, so importing this package imports none of them.
_EXPORTS = {
    "TiUEDistiller": "encoder_shrink.tiue.distiller",
    "energy_distance": "encoder_shrink.tiue.evaluation",
    "sample_distance": "encoder_shrink.tiue.evaluation",
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
    from encoder_shrink.tiue.distiller import TiUEDistiller
    from encoder_shrink.tiue.evaluation import energy_distance, sample_distance
    from encoder_shrink.tiue.pipeline import TiUEPipeline
    from encoder_shrink.tiue.recipe import TiUERecipe, available_tiue_recipes, load_tiue_recipe
    from encoder_shrink.tiue.sampler import TiUESampler
    from encoder_shrink.tiue.schedule import DDIMCombine
    from encoder_shrink.tiue.split import UNetFeatures, UNetSplit
