"""The TiUE split: encoder once, K decoders in one batch, combined in closed form, as the UNet and DDIM compute it."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.tiue import DDIMCombine, UNetSplit
from encoder_shrink.tiue import schedule as schedule_module
from encoder_shrink.tiue import split as split_module

# SD's DDIM settings (SD 1.5 / 2.1 scheduler_config.json), with which the paper's K = 4 schedule is [751, 501, 251, 1].
SD_DDIM = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
               set_alpha_to_one=False, steps_offset=1)
# The closed-form coefficients of that schedule for epsilon prediction, computed once and recorded:
# z_0 = NOISE * x_T + sum_i OUTPUTS[i] * eps_i.
NOISE = 4.234613185524161
OUTPUTS = (-2.4919454636105276, -0.9249010451173327, -0.6568047962021338, -0.012141781008114985)


def _unet(sdxl: bool = False, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=16 + 6 * 8, transformer_layers_per_block=(1, 2)) if sdxl else {}
    return UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8, **extra,
    ).eval()


def _inputs(batch: int, sdxl: bool, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 4, size, size, generator=generator)
    text = torch.randn(batch, 5, 16, generator=generator)
    added = {"text_embeds": torch.randn(batch, 16, generator=generator),
             "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * batch)} if sdxl else None
    return sample, text, added


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("size", [8, 6], ids=["even", "odd-upsample"])  # 6: sizes forwarded to the upsamplers
def test_k1_is_the_unet_exactly(sdxl, size):
    unet, split = _unet(sdxl), None
    split = UNetSplit(unet)
    sample, text, added = _inputs(2, sdxl, size)
    with torch.no_grad():
        expected = unet(sample, 501, text, added_cond_kwargs=added).sample
        features = split.encode(sample, 501, text, added)
        got = split.decode(features, torch.tensor([501]), text, added)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_k_decoders_in_one_batch_equal_k_sequential_calls(sdxl):
    split = UNetSplit(_unet(sdxl))
    sample, text, added = _inputs(3, sdxl)
    timesteps = torch.tensor([751, 501, 251, 1])
    with torch.no_grad():
        features = split.encode(sample, 751, text, added)
        batched = split.decode(features, timesteps, text, added)
        sequential = torch.cat([split.decode(features, t[None], text, added) for t in timesteps])
        # the rows are timestep-major, and each uses its own time embedding (not the encoder's)
        assert not torch.allclose(batched[:3], batched[3:6])
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-5)


def test_a_short_last_batch_works():
    split = UNetSplit(_unet())
    sample, text, _ = _inputs(3, False)
    with torch.no_grad():
        full = split.decode(split.encode(sample, 751, text), torch.tensor([751, 1]), text)
        short = split.decode(split.encode(sample[:1], 751, text[:1]), torch.tensor([751, 1]), text[:1])
    torch.testing.assert_close(short, full.reshape(2, 3, *full.shape[1:])[:, :1].reshape(2, *full.shape[1:]),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(InvalidArgumentError, match="features of 1 samples but text conditioning of 3"):
        split.decode(split.encode(sample[:1], 751, text[:1]), torch.tensor([751]), text)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_closed_form_combine_equals_chained_ddim_steps(prediction_type):
    scheduler = DDIMScheduler(**SD_DDIM, prediction_type=prediction_type)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [751, 501, 251, 1]
    combine = DDIMCombine.from_scheduler(scheduler)
    if prediction_type == "epsilon":
        assert combine.noise_coefficient == pytest.approx(NOISE, rel=1e-12)
        assert combine.output_coefficients == pytest.approx(OUTPUTS, rel=1e-12)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    outputs = torch.randn(4 * 2, 4, 8, 8, generator=generator, dtype=torch.float64)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(outputs[2 * i:2 * (i + 1)], t, x).prev_sample
    torch.testing.assert_close(combine(noise, outputs), x, atol=1e-5, rtol=1e-5)


def test_the_combine_refuses_a_nonlinear_schedule():
    clipped = DDIMScheduler(**{**SD_DDIM, "clip_sample": True})
    clipped.set_timesteps(4)
    with pytest.raises(InvalidArgumentError, match="clip_sample or thresholding is not linear"):
        DDIMCombine.from_scheduler(clipped)


def test_logic_copied_from_diffusers_has_not_drifted():
    import importlib
    import inspect
    import re

    for copied in (*split_module.COPIED_FROM, *schedule_module.COPIED_FROM):
        module, _, attribute = copied.source.rpartition(".")
        module, _, cls = module.rpartition(".")
        owner = getattr(importlib.import_module(module), cls)
        source = re.sub(r"\s+", "", inspect.getsource(getattr(owner, attribute)))
        for line in copied.lines:
            assert re.sub(r"\s+", "", line) in source, f"{copied.source} changed: {line!r}"
