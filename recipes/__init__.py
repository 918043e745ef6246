"""encoder_shrink.recipes: named, versioned training recipes (YAML) and their validation."""

from typing import TYPE_CHECKING

from encoder_shrink.lazy import lazy_exports

__all__ = ["Recipe", "RecipeBase", "RecipeError", "SourceConfig", "StageConfig", "available_recipes", "load_recipe",
           "resolve_student_t5"]

# Imported on first use: the training-method registry finds the bundled recipe folders without importing torch.
__getattr__, __dir__ = lazy_exports(__name__, {name: "encoder_shrink.recipes.recipe" for name in __all__})

if TYPE_CHECKING:
    from encoder_shrink.recipes.recipe import (
        Recipe,
        RecipeBase,
        RecipeError,
        SourceConfig,
        StageConfig,
        available_recipes,
        load_recipe,
        resolve_student_t5,
    )
