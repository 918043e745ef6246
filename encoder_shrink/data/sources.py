"""Prompt sources: the registry of source kinds a recipe stage can draw prompts from, and reading one."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.registry import Registry

# kind -> reader(source, path, seed) -> prompts. `source` is the recipe's SourceConfig (categories, split, limit);
# `path` is the file or folder given at distill time or in the recipe, or None when neither gave one.
PromptReader = Callable[[Any, "str | os.PathLike | None", int], list[str]]
PROMPT_SOURCES: Registry[PromptReader] = Registry("prompt source")


def register_prompt_source(kind: str, reader: PromptReader) -> PromptReader:
    r"""
    Register a prompt source kind (`kind:` in a recipe stage's sources, `--prompts KIND=PATH`). `reader(source, path,
    seed)` returns the prompts of one source: `source` is the stage's `SourceConfig` (`categories`, `split`, `limit`),
    `path` what the user gave for it (None if nothing was given: generate, or raise an `InvalidArgumentError` naming
    the option to pass), `seed` the recipe's. A taken kind raises.

    Example:

    ```python
    >>> register_prompt_source("lines", lambda source, path, seed: open(path).read().split("\\n"))  # doctest: +SKIP
    ```
    """
    return PROMPT_SOURCES.register(kind, reader)


def registered_prompt_sources() -> list[str]:
    """The registered source kinds, e.g. `['commontext', 'compbench', 'laion', 'prompts']`."""
    return PROMPT_SOURCES.names()


def read_source(source, given=None, seed: int = 0) -> list[str]:
    """
    The prompts of one recipe source: `given` (a list of prompts, or a path from the distill call's `prompts`
    mapping), else the recipe's `path`, read by the reader registered for `source.kind`.
    """
    where = given if given is not None else source.path
    if where is not None and not isinstance(where, (str, os.PathLike)):
        prompts = [str(p) for p in where]
        if not prompts:
            raise InvalidArgumentError(f"the prompts given for source {source.kind!r} are empty; pass at least one.")
        return prompts[: source.limit] if source.limit else prompts
    return PROMPT_SOURCES.get(source.kind)(source, where, seed)


def require_path(kind: str, path, what: str) -> None:
    """A one-line error when a source that reads files was given none."""
    if path is None:
        raise InvalidArgumentError(
            f"source {kind!r} needs {what}: pass prompts={{{kind!r}: PATH}} (or --prompts {kind}=PATH)."
        )


__all__ = ["PROMPT_SOURCES", "read_source", "register_prompt_source", "registered_prompt_sources", "require_path"]
