"""PromptMixture: a stage's prompt sources mixed by weight, drawn deterministically by batch index (resumable)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder_shrink.data.commontext import read_commontext
from encoder_shrink.data.readers import read_captions
from encoder_shrink.data.sources import read_source
from encoder_shrink.errors import InvalidArgumentError


@dataclass
class PromptMixture:
    r"""
    Prompt lists with mixing weights. `batch(index, size)` is a pure function of `(seed, index)`: each slot picks a
    source by weight, then a prompt of it uniformly, so a resumed run draws exactly the batches it would have.

    Example:

    ```python
    >>> mixture = PromptMixture({"a": ["x", "y"], "b": ["z"]}, {"a": 1.0, "b": 1.0}, seed=0)
    >>> len(mixture.batch(0, 4))
    4
    ```
    """

    sources: dict[str, list[str]]
    weights: dict[str, float]
    seed: int = 0

    def __post_init__(self):
        for name, prompts in self.sources.items():
            if not prompts:
                raise InvalidArgumentError(f"prompt source {name!r} is empty.")
        total = sum(self.weights[name] for name in self.sources)
        self._names = list(self.sources)
        self._p = np.array([self.weights[name] / total for name in self._names])

    def batch(self, index: int, size: int, stream: int = 0) -> list[str]:
        rng = np.random.default_rng([self.seed, stream, index])
        picks = rng.choice(len(self._names), size=size, p=self._p)
        prompts = []
        for pick in picks:
            source = self.sources[self._names[pick]]
            prompts.append(source[rng.integers(len(source))])
        return prompts

    def __len__(self) -> int:
        return sum(len(p) for p in self.sources.values())


PromptsArg = None | str | os.PathLike | Sequence[str] | Mapping[str, "str | os.PathLike | Sequence[str]"]


def build_mixture(stage, prompts: PromptsArg = None, seed: int = 0) -> PromptMixture:
    r"""
    The [`PromptMixture`] of a recipe stage. `prompts` may be `None` (the recipe's sources), a list of prompts or one
    file (they replace the stage's sources), or a mapping from source kind to a path or list.
    """
    if prompts is not None and not isinstance(prompts, Mapping):
        if isinstance(prompts, (str, os.PathLike)):
            path = Path(prompts)
            listed = read_commontext(path) if path.suffix == ".json" else read_captions(path)
        else:
            listed = [str(p) for p in prompts]
        if not listed:
            raise InvalidArgumentError("prompts is empty; pass at least one prompt.")
        return PromptMixture({"prompts": listed}, {"prompts": 1.0}, seed)
    given = dict(prompts or {})
    sources, weights = {}, {}
    for source in stage.sources:
        sources[source.kind] = read_source(source, given.get(source.kind), seed)
        weights[source.kind] = source.weight
    return PromptMixture(sources, weights, seed)
