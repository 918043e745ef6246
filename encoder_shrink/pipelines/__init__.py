"""Pipeline families encoder-shrink supports: one file per family in this folder, registered next to its definition.

Every module of this package is imported here, so a new family is one new file: its adapter registers itself.
"""

import importlib
import pkgutil

from encoder_shrink.pipelines.base import (
    FAMILIES,
    CopiedLogic,
    PipelineAdapter,
    SyntheticSpec,
    Trajectory,
    adapter_for,
    get_adapter,
    register_adapter,
    registered_families,
    synthetic_families,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "FAMILIES",
    "CopiedLogic",
    "PipelineAdapter",
    "SyntheticSpec",
    "Trajectory",
    "adapter_for",
    "get_adapter",
    "register_adapter",
    "registered_families",
    "synthetic_families",
]
