"""Losses, export formats and prompt sources: one registration each, next to the definition; duplicates raise."""

from __future__ import annotations

import dataclasses

import pytest
from encoder_shrink.exporters import OnnxExportConfig, format_of, register_export_format, registered_formats

from encoder_shrink import EncoderShrinkError, load_recipe
from encoder_shrink import registry as registry_module
from encoder_shrink.data import register_prompt_source, registered_prompt_sources
from encoder_shrink.data.sources import PROMPT_SOURCES
from encoder_shrink.distill import DistillationLoss, register_loss, registered_losses
from encoder_shrink.distill.losses import LOSSES
from encoder_shrink.registry import ConfigRegistry, Registry
from tests.doctests import run_docstring_examples


def test_built_ins_are_registered():
    assert registered_losses() == ["embedding", "vision"]
    assert registered_prompt_sources() == ["commontext", "compbench", "journeydb", "laion", "prompts"]
    assert {"onnx", "tensorrt", "distillt5"} <= set(registered_formats())


def test_registry_refuses_duplicates_and_names_the_registered_ones():
    registry = Registry("colour")
    registry.register("red", 1)
    with pytest.raises(EncoderShrinkError, match="A colour named 'red' is already registered"):
        registry.register("red", 2)
    with pytest.raises(EncoderShrinkError, match="Unknown colour 'rde'; registered: red. Did you mean 'red'"):
        registry.get("rde")
    assert registry.get("red") == 1


def test_a_config_registry_finds_items_by_their_config_and_refuses_a_second_claim():
    @dataclasses.dataclass
    class RedConfig:
        pass

    @dataclasses.dataclass
    class Item:
        name: str
        config_class: type

    colours = ConfigRegistry("colour")
    red = colours.register("red", Item("red", RedConfig))
    assert colours.of(RedConfig()) is red and colours.get("red") is red
    with pytest.raises(EncoderShrinkError, match="RedConfig already configures 'red'"):
        colours.register("crimson", Item("crimson", RedConfig))
    assert "crimson" not in colours
    with pytest.raises(EncoderShrinkError, match="config_class must be a dataclass"):
        colours.register("blue", Item("blue", dict))
    with pytest.raises(EncoderShrinkError, match=r"Item is not the config of a registered colour; .* one \(red\)"):
        colours.of(red)
    # the export formats are one: a config finds its format
    assert format_of(OnnxExportConfig()).name == "onnx"
    assert run_docstring_examples(registry_module) >= 5


def test_a_duplicate_loss_format_or_source_raises():
    class Again(DistillationLoss):
        name, description, uses_denoiser = "vision", "again", True

    with pytest.raises(EncoderShrinkError, match="A loss named 'vision' is already registered"):
        register_loss(Again)
    with pytest.raises(EncoderShrinkError, match="A prompt source named 'laion' is already registered"):
        register_prompt_source("laion", lambda source, path, seed: [])

    @dataclasses.dataclass
    class Options:
        pass

    with pytest.raises(EncoderShrinkError, match="An? export format named 'onnx' is already registered"):
        register_export_format("onnx", Options, lambda *args: None)


def test_a_registered_loss_and_source_are_usable_by_recipes(monkeypatch):
    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))
    monkeypatch.setattr(PROMPT_SOURCES, "_items", dict(PROMPT_SOURCES._items))

    @register_loss
    class Cosine(DistillationLoss):
        name, description, uses_denoiser = "cosine", "embedding cosine distance", False

        def __call__(self, inputs):
            import torch.nn.functional as F

            return 1 - F.cosine_similarity(inputs.student_embeddings, inputs.teacher_rows["t5"], dim=-1).mean()

    register_prompt_source("colours", lambda source, path, seed: ["a red circle", "a blue square"])
    recipe = load_recipe("tiny").with_overrides(loss="cosine")
    stages = [{"name": "s", "steps": 4, "sources": [{"kind": "colours"}]}]
    recipe = dataclasses.replace(recipe, stages=stages)
    assert recipe.losses == ["cosine"]
    from encoder_shrink.data import build_mixture

    assert set(build_mixture(recipe.stages[0]).batch(0, 8)) <= {"a red circle", "a blue square"}
    with pytest.raises(EncoderShrinkError, match="loss 'cosin' is not one of cosine, embedding, vision"):
        recipe.with_overrides(loss="cosin")
