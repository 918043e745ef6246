"""The family registry: one registration per family, duplicates and incomplete adapters refused, clear lookups."""

from __future__ import annotations

import re

import pytest

from encoder_shrink import EncoderShrinkError, adapter_for, register_adapter, registered_families, tiny
from encoder_shrink.pipelines import FAMILIES, PipelineAdapter, get_adapter


def test_every_family_registers_itself_from_its_own_file():
    import encoder_shrink.pipelines as package

    names = registered_families()
    assert names == sorted(names) and set(tiny.TINY_FAMILIES) == set(names)
    for name in names:
        adapter = get_adapter(name)
        assert adapter.__module__.startswith(package.__name__ + ".") and not adapter.__module__.endswith(".base")
    with pytest.raises(EncoderShrinkError, match=re.escape(
        f"Unknown pipeline family 'flux'; registered: {', '.join(names)}. Did you mean 'flux2'?"
    )):
        get_adapter("flux")


def test_unsupported_pipeline_lists_supported_families():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    with pytest.raises(
        ValueError, match="DDPMPipeline is not a supported pipeline .*" + ", ".join(registered_families())
    ):
        adapter_for(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


def _complete(name: str):
    """An adapter class with every required attribute and hook, registered under `name` only if asked."""
    flux = get_adapter("flux-dev")
    attributes = {attribute: getattr(flux, attribute) for attribute in PipelineAdapter.REQUIRED}
    attributes.update(name=name, encode_teacher=flux.encode_teacher, predict=flux.predict,
                      tiny_components=flux.tiny_components)
    return type(f"Adapter_{name.replace('-', '_')}", (PipelineAdapter,), attributes)


def test_registry_refuses_duplicates_and_incomplete_adapters():
    with pytest.raises(EncoderShrinkError, match="'flux-dev' is already registered"):
        register_adapter(_complete("flux-dev"))

    class Incomplete(PipelineAdapter):
        name = "half"

    with pytest.raises(EncoderShrinkError, match="does not set `pipeline_class`"):
        register_adapter(Incomplete)
    no_tiny = _complete("no-tiny")
    del no_tiny.tiny_components
    with pytest.raises(EncoderShrinkError, match="does not implement `tiny_components`"):
        register_adapter(no_tiny)
    assert "half" not in registered_families() and "no-tiny" not in registered_families()


def test_a_registered_family_is_picked_up_by_lookups(monkeypatch):
    monkeypatch.setattr(FAMILIES, "_items", dict(FAMILIES._items))  # undone after the test
    register_adapter(_complete("flux-copy"))
    assert "flux-copy" in registered_families() and get_adapter("flux-copy").pipeline_class == "FluxPipeline"


def test_docs_family_table_lists_every_family_with_its_call():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "pipelines.md").read_text()
    for name in registered_families():
        adapter = get_adapter(name)
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, name
        cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
        assert cells[1].startswith(adapter.pipeline_class) and cells[2] == f"`{adapter.encoder_slot}`"
        assert int(cells[3]) == adapter.max_sequence_length
        assert cells[4] == ("yes" if adapter.uses_attention_mask else "no" if adapter.pads_prompts else "unpadded")
