"""The `checker` metric: the toy world's deterministic checker (colour, shape, count, position, text per prompt)."""

from __future__ import annotations

import dataclasses

import numpy as np

from encoder_shrink.evaluation.metrics import register_metric


@dataclasses.dataclass
class ToyCheckerConfig:
    r"""
    Configures the `checker` metric: each image is checked against its toy-world prompt by `encoder_shrink.toy.check`
    (per category: the fraction of prompts testing it that got it right; `overall`: every attribute right).

    Example:

    ```python
    >>> from encoder_shrink.evaluation import score_images
    >>> from encoder_shrink.toy import render
    >>> score_images([render("two blue squares")], ["two blue squares"], ToyCheckerConfig())["count"]
    1.0
    ```
    """


def _score_checker(config: ToyCheckerConfig, images: np.ndarray, prompts: list[str]) -> dict:
    from encoder_shrink.toy import score

    return score(images, prompts)


register_metric("checker", ToyCheckerConfig, _score_checker, headline=("overall",),
                description="the toy world's checker: accuracy per category (colour, shape, count, position, text)")

__all__ = ["ToyCheckerConfig"]
