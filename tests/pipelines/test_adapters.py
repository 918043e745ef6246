"""Pipeline family adapters: recognition of each family, their facts against diffusers, and the registry."""

from __future__ import annotations

import inspect

import pytest

from encoder_shrink import adapter_for, register_adapter, registered_families, testing
from encoder_shrink.pipelines import PipelineAdapter, get_adapter

EXPECTED = {
    # family: (slot, tokenizer slot, uses mask)
    "flux-dev": ("text_encoder_2", "tokenizer_2", False),
    "flux-schnell": ("text_encoder_2", "tokenizer_2", False),
    "sd3": ("text_encoder_3", "tokenizer_3", False),
    "pixart-alpha": ("text_encoder", "tokenizer", True),
    "pixart-sigma": ("text_encoder", "tokenizer", True),
}


@pytest.mark.parametrize("family", testing.TINY_FAMILIES)
def test_adapter_recognises_family(family, tiny_pipeline_dirs):
    pipe = testing.tiny_pipeline_class(family).from_pretrained(tiny_pipeline_dirs[family])
    adapter = adapter_for(pipe)
    assert adapter.name == family
    assert (adapter.encoder_slot, adapter.tokenizer_slot, adapter.uses_attention_mask) == EXPECTED[family]
    assert adapter.teacher is getattr(pipe, adapter.encoder_slot)
    assert adapter.conditioning_width == adapter.teacher.config.d_model


def test_default_lengths_match_the_pipelines():
    import diffusers

    defaults = {
        "flux-dev": ("FluxPipeline", 512),
        "sd3": ("StableDiffusion3Pipeline", 256),
        "pixart-alpha": ("PixArtAlphaPipeline", 120),
        "pixart-sigma": ("PixArtSigmaPipeline", 300),
    }
    for family, (pipeline_name, length) in defaults.items():
        call = inspect.signature(getattr(diffusers, pipeline_name).__call__)
        assert call.parameters["max_sequence_length"].default == length
        assert get_adapter(family).max_sequence_length == length
    assert get_adapter("flux-schnell").max_sequence_length == 256
    with pytest.raises(ValueError, match="Unknown pipeline family 'flux'; registered: flux-dev, flux-schnell"):
        get_adapter("flux")


def test_unsupported_pipeline_lists_supported_families():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    with pytest.raises(ValueError, match="DDPMPipeline is not a supported pipeline .*flux-dev, flux-schnell, pixart-alpha, pixart-sigma, sd3"):
        adapter_for(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


def test_registry_refuses_duplicates_and_incomplete_adapters():
    class Again(PipelineAdapter):
        name = "flux-dev"
        denoiser_class = "X"
        encoder_slot = tokenizer_slot = conditioning_width_key = "x"
        max_sequence_length = 1
        uses_attention_mask = False
        guidance = None

    with pytest.raises(ValueError, match="'flux-dev' is already registered"):
        register_adapter(Again)

    class Incomplete(PipelineAdapter):
        name = "half"

    with pytest.raises(TypeError, match="does not set `denoiser_class`"):
        register_adapter(Incomplete)
    assert "half" not in registered_families()
