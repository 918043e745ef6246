"""The traced adapter on diffusers families no family file describes, each a tiny offline pipeline built in code."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from encoder_shrink import EncoderShrinker
from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.inspection import inspect_pipeline
from encoder_shrink.pipelines.traced import TracedAdapter
from tests.pipelines.test_traced import PROMPTS, _sample
from tests.pipelines.traced_families import TRACED_FAMILIES, reload_kwargs

# Families the trace refuses, and the words of the one-line reason a user gets: LongCat's prompt code detaches the
# encoder's output, so no student could learn through it.
REFUSED: dict[str, str] = {"longcat-image": "cuts the gradient"}
# Families that encode at per-prompt lengths (padding to the batch's longest, or prompts and negatives at different
# lengths): the trace runs their `__call__` one prompt at a time.
PER_PROMPT_LENGTHS = {"cogview4", "kandinsky5-t2i", "kandinsky5-t2v", "sana-video"}
SERVED = [family for family in TRACED_FAMILIES if family not in REFUSED]
# Cosmos's tiny denoiser reads the text weakly: more steps and a 32-wide, 2-layer student (0.51x of the start after
# 160 steps, 0.37x after 480, 0.17x with the wider student).
STEPS = {"cosmos2": 480}
WIDER = {"student_config": {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
                            "feed_forward_proj": "gated-gelu"}}


def _built(family):
    pipe, call = TRACED_FAMILIES[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe, call


@pytest.mark.parametrize("family", list(TRACED_FAMILIES))
def test_trace_of_a_new_family_samples_as_the_pipeline_does_and_inspect_reports_it(family):
    pipe, call = _built(family)
    if family in REFUSED:
        with pytest.raises(IncompatibleModelError, match=REFUSED[family]) as refused:
            TracedAdapter(pipe, call_kwargs=call)
        assert "\n" not in str(refused.value)
        return
    traced = TracedAdapter(pipe, call_kwargs=call)
    assert traced.report.variable_length == (family in PER_PROMPT_LENGTHS)
    guidance = 3.0 if traced.guidance else None
    latents = _sample(traced, call, guidance)
    # the pipeline's own output; at per-prompt lengths, one prompt per call, drawing from one generator in turn
    kwargs = {**call, "num_inference_steps": 3, "generator": torch.Generator().manual_seed(5), "output_type": "latent"}
    parameters = inspect.signature(pipe.__call__).parameters
    if guidance is not None:
        kwargs.update(traced.guidance_call_kwargs(guidance))
    own = []
    for batch in [[p] for p in PROMPTS] if traced.report.variable_length else [PROMPTS]:
        if traced.guidance == "cfg" and "negative_prompt" in parameters:
            kwargs["negative_prompt"] = [""] * len(batch)
        own.append(pipe(prompt=list(batch), **kwargs)[0])
    assert torch.isfinite(latents).all()
    torch.testing.assert_close(latents, torch.cat(own), atol=1e-5, rtol=0)

    report = inspect_pipeline(pipe, call_kwargs=call)
    assert report["family"] == f"traced:{type(pipe).__name__}"
    assert report["slot"] == traced.encoder_slot and report["student"] == traced.student_class().__name__
    assert report["call_length"] == traced.report.call_length
    assert report["call_length_varies"] == (family in PER_PROMPT_LENGTHS)
    assert report["text_derived_inputs"] and report["denoiser_calls_per_step"] == traced.report.calls_per_step
    assert report["weights_ratio"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", SERVED)
def test_a_new_family_distils_drops_in_and_reloads(family, tmp_path):
    pipe, call = _built(family)
    pipe.save_pretrained(tmp_path / "teacher")
    pipeline_class = type(pipe)
    shrinker = EncoderShrinker(pipe, call_kwargs=call)
    assert shrinker.adapter.name == f"traced:{pipeline_class.__name__}"
    student = shrinker.distill(recipe="tiny", output_dir=tmp_path / "out", max_steps=STEPS.get(family, 160),
                               **(WIDER if family in STEPS else {}),
                               resolution=call.get("height", 16))
    before = shrinker.summary["fidelity_before"]["relative_mse"]
    after = shrinker.summary["fidelity_after"]["relative_mse"]
    assert after < 0.3 * before, (before, after)

    slot = shrinker.adapter.encoder_slot
    saved = type(student).from_pretrained(tmp_path / "out" / "student")
    with_student = pipeline_class.from_pretrained(tmp_path / "teacher", **{slot: saved}, **reload_kwargs(family))
    with_student.set_progress_bar_config(disable=True)
    run = {**call, "num_inference_steps": 2, "output_type": "np"}
    if "negative_prompt" in inspect.signature(pipeline_class.__call__).parameters:
        run["negative_prompt"] = ""  # EasyAnimate 0.42 iterates a None negative_prompt under CFG
    first = np.asarray(with_student(prompt="a red circle", generator=torch.Generator().manual_seed(0), **run)[0])
    assert np.isfinite(first).all()
    with_student.save_pretrained(tmp_path / "saved")
    reloaded = pipeline_class.from_pretrained(tmp_path / "saved", **reload_kwargs(family))
    reloaded.set_progress_bar_config(disable=True)
    assert type(getattr(reloaded, slot)) is type(student)
    again = np.asarray(reloaded(prompt="a red circle", generator=torch.Generator().manual_seed(0), **run)[0])
    np.testing.assert_array_equal(again, first)
