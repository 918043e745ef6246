"""Image metrics: the registry (one `register_metric` call per metric) and `score_images`, which runs one on images."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from encoder_shrink.errors import (
    BackendUnavailableError,
    InvalidArgumentError,
)
from encoder_shrink.registry import ConfigRegistry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Metric:
    r"""
    A registered image metric.

    Args:
        name: what `--metric` and `evaluate(metrics=[...])` call it.
        config_class: the dataclass that configures it (validated in its `__post_init__`).
        scorer: `(config, images, prompts) -> dict`: the figures for `images` (uint8, N x H x W x 3), one per prompt.
        description: one line for `--help` and the docs.
        headline: the scorer's figures (keys of its dict) that tables show, e.g. `("char", "word", "sentence")`.
        validate: `(config, prompts) -> None`, raising in one line when the prompts cannot be scored (e.g. `ocr` with
            no quoted text), checked before any image is generated.
        unavailable: `() -> str | None`, why the metric cannot run here (a missing package), checked before any image
            is generated.
    """

    name: str
    config_class: type
    scorer: Callable[..., dict]
    description: str = ""
    headline: tuple[str, ...] = ()
    unavailable: Callable[[], str | None] | None = None
    validate: Callable[..., None] | None = None


METRICS: ConfigRegistry[Metric] = ConfigRegistry("metric")


def register_metric(name: str, config_class: type, scorer: Callable[..., dict], *, headline: tuple[str, ...],
                    description: str = "", unavailable: Callable[[], str | None] | None = None,
                    validate: Callable[..., None] | None = None) -> Metric:
    r"""
    Register an image metric: its config dataclass and its scorer, one call next to their definition. A taken name or
    config class raises.

    Example:

    ```python
    >>> @dataclasses.dataclass
    ... class MeanBrightnessConfig:
    ...     pass
    >>> def _mean_brightness(config, images, prompts):
    ...     return {"brightness": float(images.mean() / 255)}
    >>> _ = register_metric("brightness", MeanBrightnessConfig, _mean_brightness,
    ...                     headline=("brightness",))  # doctest: +SKIP
    ```
    """
    if not headline or not all(isinstance(h, str) for h in headline):
        raise InvalidArgumentError(f"metric {name!r}: name the figures tables show, e.g. headline=('score',).")
    return METRICS.register(name, Metric(name, config_class, scorer, description, tuple(headline), unavailable,
                                         validate))


def registered_metrics() -> list[str]:
    """Names of the registered metrics, e.g. `['checker', 'clip', 'ocr']`."""
    return METRICS.names()


def get_metric(name: str) -> Metric:
    """The registered metric `name`."""
    return METRICS.get(name)


def metric_of(config) -> Metric:
    """The registered metric whose config class `config` is an instance of."""
    return METRICS.of(config)


def metric_config(metric, **options):
    r"""
    The config of `metric`: a config instance is returned as it is; a name builds its config class from `options`
    (fields the class does not have are refused).

    Example:

    ```python
    >>> metric_config("ocr")
    OCRMetricConfig(min_side=256, text_score=0.5)
    ```
    """
    if not isinstance(metric, str):
        metric_of(metric)
        if options:
            raise InvalidArgumentError(
                f"options {sorted(options)} were given with a {type(metric).__name__}; set them on the config instead."
            )
        return metric
    entry = get_metric(metric)
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InvalidArgumentError(
            f"metric {metric!r} takes no option {', '.join(unknown)}; "
            f"its options: {', '.join(sorted(fields)) or 'none'}."
        )
    return entry.config_class(**options)


def options_for(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The `options` that metric `name`'s config class has a field for (CLI flags reach the metrics that read them)."""
    fields = {f.name for f in dataclasses.fields(get_metric(name).config_class)}
    return {key: value for key, value in options.items() if key in fields}


def check_prompts(config, prompts: Sequence[str]) -> None:
    """Raise, in one line, if the metric of `config` cannot score these prompts (its `validate`)."""
    entry = metric_of(config)
    if entry.validate is not None:
        entry.validate(config, list(prompts))


def check_available(config) -> None:
    """Raise, in one line, if the metric of `config` cannot run here (e.g. its package is not installed)."""
    entry = metric_of(config)
    reason = entry.unavailable() if entry.unavailable else None
    if reason:
        raise BackendUnavailableError(f"metric {entry.name!r} cannot run here: {reason}")


def as_images(media) -> np.ndarray:
    """uint8 images N x H x W x 3 from images, or from videos (N x F x H x W x 3: each clip's middle frame)."""
    media = np.asarray(media)
    if media.ndim == 5:
        media = media[:, media.shape[1] // 2]
    if media.ndim != 4 or media.shape[-1] != 3:
        raise InvalidArgumentError(
            f"metrics score RGB images N x H x W x 3 (or videos N x F x H x W x 3), got shape {media.shape}."
        )
    return to_uint8(media)


def to_uint8(pixels) -> np.ndarray:
    """uint8 pixels from uint8 (kept) or float pixels in [0, 1] (clipped, scaled and rounded)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return (np.clip(pixels.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)


def score_images(images, prompts: Sequence[str], metric, **options) -> dict[str, Any]:
    r"""
    Score `images` (uint8 or float in [0, 1]; one per prompt; videos by their middle frame) with a registered metric,
    given by name (with its `options`) or by its config.

    Example:

    ```python
    >>> from encoder_shrink.toy.world import render
    >>> score_images([render("a red circle")], ["a red circle"], "checker")["overall"]
    1.0
    ```
    """
    config = metric_config(metric, **options)
    check_available(config)
    images = as_images(images)
    prompts = list(prompts)
    if len(images) != len(prompts):
        raise InvalidArgumentError(f"{len(images)} images for {len(prompts)} prompts; pass one image per prompt.")
    if not prompts:
        raise InvalidArgumentError("no images to score; pass at least one image and its prompt.")
    check_prompts(config, prompts)
    return metric_of(config).scorer(config, images, prompts)


__all__ = [
    "METRICS",
    "Metric",
    "as_images",
    "check_available",
    "check_prompts",
    "get_metric",
    "metric_config",
    "metric_of",
    "options_for",
    "register_metric",
    "registered_metrics",
    "score_images",
    "to_uint8",
]
