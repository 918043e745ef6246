"""encoder_shrink.recipes: named, versioned distillation recipes (YAML) and their validation."""

from encoder_shrink.recipes.recipe import (
    Recipe,
    RecipeError,
    SourceConfig,
    StageConfig,
    available_recipes,
    load_recipe,
    resolve_student_t5,
)

__all__ = ["Recipe", "RecipeError", "SourceConfig", "StageConfig", "available_recipes", "load_recipe",
           "resolve_student_t5"]
