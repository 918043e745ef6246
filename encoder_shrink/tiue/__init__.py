"""TiUE (arXiv 2505.21960): loop-free UNet students whose encoder runs once and whose decoder runs K steps at once."""

from encoder_shrink.tiue.distiller import TiUEDistiller
from encoder_shrink.tiue.evaluation import energy_distance, sample_distance
from encoder_shrink.tiue.pipeline import TiUEPipeline
from encoder_shrink.tiue.recipe import TiUERecipe, available_tiue_recipes, load_tiue_recipe
from encoder_shrink.tiue.sampler import TiUESampler
from encoder_shrink.tiue.schedule import DDIMCombine
from encoder_shrink.tiue.split import UNetFeatures, UNetSplit

__all__ = ["DDIMCombine", "TiUEDistiller", "TiUEPipeline", "TiUERecipe", "TiUESampler", "UNetFeatures", "UNetSplit",
           "available_tiue_recipes", "energy_distance", "load_tiue_recipe", "sample_distance"]
