"""Layouts of a family's pipeline that its tiny pipeline in the shared suite does not take: each reproduces sampling.

Wan 2.2 (two experts split at a boundary timestep; per-token timesteps), Mochi with empty prompts forced to zeros,
Latte with a single prompt (its embeddings cut to the prompt's length), and Sana at a max_sequence_length other than
its default.
"""

from __future__ import annotations

import pytest
import torch

from encoder_shrink import adapter_for, tiny
from encoder_shrink.pipelines import get_adapter

PROMPTS = ["two red circles left of a blue square", "a cat"]


def _pipe(family, **config):
    adapter = get_adapter(family)
    components = adapter.tiny_components()
    if config.get("boundary_ratio") is not None:
        from diffusers import WanTransformer3DModel

        torch.manual_seed(1)  # a second expert with its own weights, so picking the wrong one shows
        components["transformer_2"] = WanTransformer3DModel.from_config(components["transformer"].config)
    pipe = adapter.diffusers_pipeline_class()(**components, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_trajectory_reproduces_sampling(pipe, prompts, steps=4, guidance=4.5, length=None):
    adapter = adapter_for(pipe)
    kwargs = {**adapter.tiny_call_kwargs(), "num_inference_steps": steps, "guidance_scale": guidance,
              "output_type": "latent", **({"max_sequence_length": length} if length else {})}
    expected = tiny.generated(pipe(prompts, generator=torch.Generator().manual_seed(3), **kwargs))
    length = length or adapter.max_sequence_length
    texts = adapter.encoder_texts(prompts)  # the negatives ("") first, as the pipeline encodes them
    rows = adapter.encode_teacher(texts, length)
    _, mask = adapter.tokenize(texts, length)
    trajectory = adapter.start_trajectory(len(prompts), kwargs["height"], steps, torch.Generator().manual_seed(3),
                                          num_frames=kwargs.get(adapter.frames_argument))
    with torch.no_grad():
        for t in trajectory.timesteps:
            adapter.step(trajectory, adapter.predict(trajectory, t, rows["t5"], rows, mask, guidance), t)
    torch.testing.assert_close(trajectory.latents, torch.as_tensor(expected), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [{"boundary_ratio": 0.6}, {"expand_timesteps": True}], ids=["a14b", "ti2v"])
def test_wan22_trajectory_reproduces_pipeline_sampling(config):
    pipe = _pipe("wan", **config)
    assert len(adapter_for(pipe).denoisers) == (2 if "boundary_ratio" in config else 1)
    _assert_trajectory_reproduces_sampling(pipe, PROMPTS)


def test_wan22_samples_with_both_experts():
    pipe = _pipe("wan", boundary_ratio=0.6)
    adapter = adapter_for(pipe)
    timesteps = adapter.start_trajectory(1, 16, 4, None, num_frames=5).timesteps
    assert {id(adapter._model_at(t, 1.0)[0]) for t in timesteps} == {id(pipe.transformer), id(pipe.transformer_2)}


def test_mochi_with_empty_prompts_forced_to_zeros():
    pipe = _pipe("mochi", force_zeros_for_empty_prompt=True)
    adapter = adapter_for(pipe)
    ids, mask = adapter.tokenize(["", "a cat"], adapter.max_sequence_length)
    assert not ids[0].any() and not mask[0].any() and mask[1].any()
    _assert_trajectory_reproduces_sampling(pipe, PROMPTS)


def test_latte_with_one_prompt_cuts_the_embeddings_to_its_length():
    _assert_trajectory_reproduces_sampling(_pipe("latte"), PROMPTS[:1])


def test_mochi_refuses_a_one_step_schedule_in_one_line():
    from encoder_shrink import EncoderShrinkError

    adapter = adapter_for(_pipe("mochi"))
    with pytest.raises(EncoderShrinkError, match="MochiPipeline's sigma schedule needs at least 2 steps, got 1"):
        adapter.start_trajectory(1, 16, 1, None, num_frames=7)


def test_a_resolution_the_pipeline_refuses_is_refused_in_one_line():
    from encoder_shrink import EncoderShrinkError

    adapter = adapter_for(_pipe("ltx"))
    message = "LTXPipeline generates at multiples of 32 px, not 48; set the recipe's resolution to 32"
    with pytest.raises(EncoderShrinkError, match=message):
        adapter.start_trajectory(1, 48, 2, None, num_frames=9)


def test_sana_at_a_shorter_max_sequence_length():
    # The positions handed to the denoiser (BOS + the last L - 1) follow the run's length, not the default 300.
    _assert_trajectory_reproduces_sampling(_pipe("sana"), PROMPTS, length=128)
