"""Lazy package attributes (PEP 562): a package names what it exports and imports each module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """
    The module-level `__getattr__` and `__dir__` of `package`, which exports each name of `table` from the module the
    table names (as diffusers' `_LazyModule` does), so that importing the package imports none of them.

    Example:

    ```python
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"distill_loop": "encoder_shrink.distill.loop"})
    ```
    """

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name]), name)

    def __dir__() -> list[str]:
        return sorted(set(table) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
