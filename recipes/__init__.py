"""encoder_shrink.recipes: named, versioned distillation recipes (YAML) and their validation."""
