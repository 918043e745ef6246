"""Metrics: one registration each (a user's own works through score_images and evaluate); bad input fails early."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest

from encoder_shrink import EncoderShrinkError
from encoder_shrink.evaluation import (
    OCRMetricConfig,
    metric_config,
    register_metric,
    registered_metrics,
    score_images,
)
from encoder_shrink.toy import render
from tests.doctests import run_docstring_examples


@dataclasses.dataclass
class RedShareConfig:
    channel: int = 0


def _red_share(config, images, prompts):
    share = images[..., config.channel].astype(float).mean((1, 2)) / 255
    return {"share": float(share.mean()), "per_image": share.tolist(), "prompts": len(prompts)}


def test_built_in_metrics_are_registered():
    assert {"checker", "clip", "ocr"} <= set(registered_metrics())
    assert metric_config("ocr") == OCRMetricConfig()


def test_a_duplicate_name_or_config_raises(scratch_registry):
    with pytest.raises(EncoderShrinkError, match="A metric named 'ocr' is already registered"):
        register_metric("ocr", RedShareConfig, _red_share, headline=("share",))
    with pytest.raises(EncoderShrinkError, match="OCRMetricConfig already configures 'ocr'"):
        register_metric("ocr-again", OCRMetricConfig, _red_share, headline=("share",))
    with pytest.raises(EncoderShrinkError, match="must be a dataclass"):
        register_metric("plain", dict, _red_share, headline=("share",))
    with pytest.raises(EncoderShrinkError, match="headline"):
        register_metric("nothing-shown", RedShareConfig, _red_share, headline=())


def test_a_registered_metric_scores_images_and_videos(scratch_registry):
    register_metric("red-share", RedShareConfig, _red_share, headline=("share",))
    images = np.stack([render("a red circle"), render("a blue square")])
    result = score_images(images, ["a red circle", "a blue square"], "red-share")
    assert result["per_image"][0] > result["per_image"][1]
    assert score_images(images, ["a", "b"], "red-share", channel=2)["per_image"][1] > result["per_image"][1]
    # Videos are scored on each clip's middle frame; float media in [0, 1] count as 0-255.
    video = np.zeros((2, 3, 32, 32, 3), np.float32)
    video[:, 1, ..., 0] = 1.0
    assert score_images(video, ["a", "b"], "red-share")["per_image"] == [1.0, 1.0]
    with pytest.raises(EncoderShrinkError, match="takes no option clip; its options: channel"):
        score_images(images, ["a", "b"], "red-share", clip="x")
    with pytest.raises(EncoderShrinkError, match="2 images for 1 prompts"):
        score_images(images, ["a"], "red-share")
    with pytest.raises(EncoderShrinkError, match="Unknown metric 'red-shar'.*Did you mean 'red-share'"):
        score_images(images, ["a", "b"], "red-shar")


def test_a_metric_that_cannot_run_here_fails_before_any_work(scratch_registry):
    calls = []
    register_metric("needs-gpu", RedShareConfig, lambda *args: calls.append(1) or {}, headline=("share",),
                    unavailable=lambda: "it needs a CUDA GPU")
    with pytest.raises(EncoderShrinkError, match="metric 'needs-gpu' cannot run here: it needs a CUDA GPU"):
        score_images(np.zeros((1, 8, 8, 3), np.uint8), ["a"], "needs-gpu")
    assert calls == []


def test_a_metric_refuses_prompts_it_cannot_score_before_scoring(scratch_registry):
    def refuse(config, prompts):
        if not all(p.startswith("a ") for p in prompts):
            raise EncoderShrinkError("metric 'picky' scores prompts starting with 'a '; rephrase them.")

    calls = []
    register_metric("picky", RedShareConfig, lambda *args: calls.append(1) or {}, headline=("share",),
                    validate=refuse)
    with pytest.raises(EncoderShrinkError, match="rephrase them"):
        score_images(np.zeros((1, 8, 8, 3), np.uint8), ["two squares"], "picky")
    assert calls == []
    with pytest.raises(EncoderShrinkError, match="set them on the config instead"):
        metric_config(RedShareConfig(), channel=1)


@pytest.mark.parametrize("name", ["metrics", "ocr", "clip_score", "checker"])
def test_docstring_examples_run(name):
    if name == "ocr":
        pytest.importorskip("rapidocr_onnxruntime", reason="read_text's example needs encoder-shrink[eval]")
    # by module path: the package's `clip_score` is the function of that name
    assert run_docstring_examples(importlib.import_module(f"encoder_shrink.evaluation.{name}")) >= 1
