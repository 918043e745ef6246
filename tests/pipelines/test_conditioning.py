"""Adapters build conditioning and trajectories exactly as each pipeline does at inference."""

from __future__ import annotations

import pytest
import torch

from encoder_shrink import adapter_for, testing

PROMPTS = ["two red circles left of a blue square", "A Cat holding a sign that says 'hello'"]
# CPU kernels are not bit-reproducible across calls with different batch layouts; 1e-4 is far below any real change.
TOL = {"atol": 1e-4, "rtol": 1e-4}
GUIDANCE = {"flux-dev": 3.5, "flux-schnell": None, "sd3": 4.0, "pixart-alpha": 4.5, "pixart-sigma": 4.5}


def _pipeline_conditioning(pipe, family, length):
    """T5 embeddings (negatives first for CFG) as the pipeline's own encode_prompt returns them."""
    if family.startswith("flux"):
        return pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, max_sequence_length=length)[0]
    if family == "sd3":
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=PROMPTS, prompt_2=None, prompt_3=None, do_classifier_free_guidance=True, max_sequence_length=length
        )
        return torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        PROMPTS, do_classifier_free_guidance=True, max_sequence_length=length, clean_caption=False
    )
    return torch.cat([negative, embeds]), torch.cat([negative_mask, mask])


@pytest.mark.parametrize("family", testing.TINY_FAMILIES)
def test_teacher_conditioning_matches_encode_prompt(family, tiny_pipeline_dirs):
    pipe = testing.tiny_pipeline_class(family).from_pretrained(tiny_pipeline_dirs[family])
    adapter = adapter_for(pipe)
    length = adapter.max_sequence_length
    texts = adapter.encoder_texts(PROMPTS)
    rows = adapter.encode_teacher(texts, length)
    ids, mask = adapter.tokenize(texts, length)
    expected = _pipeline_conditioning(pipe, family, length)
    if family.startswith("flux"):
        torch.testing.assert_close(rows["t5"], expected, **TOL)
        assert mask is None
    elif family == "sd3":
        embeds, pooled = expected
        torch.testing.assert_close(torch.cat([rows["clip"], rows["t5"]], dim=-2), embeds, **TOL)
        torch.testing.assert_close(rows["pooled"], pooled, **TOL)
    else:
        embeds, expected_mask = expected
        torch.testing.assert_close(rows["t5"], embeds, **TOL)
        torch.testing.assert_close(mask, expected_mask, **TOL)
    # the teacher, run on the adapter's tokens, gives the same rows: the student sees exactly these tokens
    with torch.no_grad():
        torch.testing.assert_close(adapter.teacher(ids, attention_mask=mask)[0], rows["t5"], **TOL)


@pytest.mark.parametrize("family", testing.TINY_FAMILIES)
def test_teacher_trajectory_reproduces_pipeline_sampling(family, tiny_pipeline_dirs):
    pipe = testing.tiny_pipeline_class(family).from_pretrained(tiny_pipeline_dirs[family])
    pipe.set_progress_bar_config(disable=True)
    adapter = adapter_for(pipe)
    kwargs = testing.tiny_call_kwargs(pipe, num_inference_steps=3, seed=11)
    kwargs["output_type"] = "latent"
    kwargs["max_sequence_length"] = adapter.max_sequence_length
    if GUIDANCE[family] is not None:
        kwargs["guidance_scale"] = GUIDANCE[family]
    expected = pipe(PROMPTS, **kwargs).images

    length = adapter.max_sequence_length
    texts = adapter.encoder_texts(PROMPTS)
    rows = adapter.encode_teacher(texts, length)
    _, mask = adapter.tokenize(texts, length)
    trajectory = adapter.start_trajectory(len(PROMPTS), kwargs["height"], 3, torch.Generator("cpu").manual_seed(11))
    with torch.no_grad():
        for t in trajectory.timesteps:
            prediction = adapter.predict(trajectory, t, rows["t5"], rows, mask, GUIDANCE[family])
            adapter.step(trajectory, prediction, t)
    torch.testing.assert_close(trajectory.latents, expected, atol=1e-5, rtol=1e-4)
