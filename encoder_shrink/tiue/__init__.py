"""TiUE (arXiv 2505.21960): loop-free UNet students whose encoder runs once and whose decoder runs K steps at once."""

from encoder_shrink.tiue.pipeline import TiUEPipeline
from encoder_shrink.tiue.schedule import DDIMCombine
from encoder_shrink.tiue.split import UNetFeatures, UNetSplit

__all__ = ["DDIMCombine", "TiUEPipeline", "UNetFeatures", "UNetSplit"]
