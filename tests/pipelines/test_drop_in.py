"""Drop-in: each pipeline family loads, encodes with and generates with the student, saves and reloads it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from encoder_shrink import ShrunkT5EncoderModel, adapter_for, testing

PROMPT = "two red circles left of a blue square"


def _student_for(family: str) -> ShrunkT5EncoderModel:
    adapter_name = family
    return testing.tiny_student(teacher_dim=testing.T5_TINY_DIM, pipeline_family=adapter_name)


def _pipeline_t5_embeddings(pipe, prompt: str, length: int) -> torch.Tensor:
    """The T5 part of the conditioning, exactly as the pipeline's own encode_prompt builds it."""
    family = adapter_for(pipe).name
    if family.startswith("flux"):
        embeds, _, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=length)
        return embeds
    if family == "sd3":
        embeds, *_ = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, max_sequence_length=length
        )
        return embeds[:, -length:]  # CLIP tokens first, then the T5 tokens along the sequence
    embeds, *_ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=length)
    return embeds


def _student_embeddings(pipe, student, prompt: str, length: int) -> torch.Tensor:
    adapter = adapter_for(pipe)
    tokens = adapter.tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    mask = tokens.attention_mask if adapter.uses_attention_mask else None
    with torch.no_grad():
        return student(tokens.input_ids, attention_mask=mask)[0]


@pytest.mark.parametrize("family", testing.TINY_FAMILIES)
def test_pipeline_from_pretrained_with_student(family, tiny_pipeline_dirs, caplog):
    pipeline_class = testing.tiny_pipeline_class(family)
    teacher_pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs[family])
    student = _student_for(family)
    slot = adapter_for(teacher_pipe).encoder_slot

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: student})
    finally:
        diffusers_logging.disable_propagation()
    assert "Expected types" not in caplog.text and "non-standard module" not in caplog.text
    # control: the same capture does see diffusers' type warning for an encoder that is not a T5EncoderModel
    caplog.clear()
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: testing.tiny_student().encoder})
    finally:
        diffusers_logging.disable_propagation()
    assert f"Expected types for {slot}" in caplog.text
    assert getattr(pipe, slot) is student

    # the conditioning the pipeline builds is the student's output, not the teacher's
    length = adapter_for(pipe).max_sequence_length
    embeds = _pipeline_t5_embeddings(pipe, PROMPT, length)
    assert embeds.shape[-1] == testing.T5_TINY_DIM
    torch.testing.assert_close(embeds, _student_embeddings(pipe, student, PROMPT, length), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(embeds, _pipeline_t5_embeddings(teacher_pipe, PROMPT, length))

    images = pipe(PROMPT, **testing.tiny_call_kwargs(pipe)).images
    teacher_images = teacher_pipe(PROMPT, **testing.tiny_call_kwargs(teacher_pipe)).images
    assert images.shape == teacher_images.shape and images.shape[0] == 1
    assert np.isfinite(images).all()
    assert not np.allclose(images, teacher_images)


@pytest.mark.parametrize("family", testing.TINY_FAMILIES)
def test_saved_pipeline_with_student_reloads_with_plain_from_pretrained(family, tiny_pipeline_dirs, tmp_path):
    pipeline_class = testing.tiny_pipeline_class(family)
    student = _student_for(family)
    slot = adapter_for(pipeline_class.from_pretrained(tiny_pipeline_dirs[family])).encoder_slot
    pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: student})
    pipe.save_pretrained(tmp_path / "with-student")
    assert sorted(p.name for p in (tmp_path / "with-student" / slot).iterdir()) == ["config.json", "model.safetensors"]

    reloaded = pipeline_class.from_pretrained(tmp_path / "with-student")
    assert type(getattr(reloaded, slot)) is ShrunkT5EncoderModel
    np.testing.assert_array_equal(
        reloaded(PROMPT, **testing.tiny_call_kwargs(reloaded)).images, pipe(PROMPT, **testing.tiny_call_kwargs(pipe)).images
    )


def test_bfloat16_pipeline_with_bfloat16_student(tiny_pipeline_dirs):
    """FLUX casts prompt embeddings to text_encoder_2.dtype: the student's dtype must be its output dtype."""
    student = _student_for("flux-dev").to(torch.bfloat16)
    pipe = testing.tiny_pipeline_class("flux-dev").from_pretrained(
        tiny_pipeline_dirs["flux-dev"], text_encoder_2=student, dtype=torch.bfloat16
    )
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=512)
    assert embeds.dtype == torch.bfloat16
    images = pipe(PROMPT, **testing.tiny_call_kwargs(pipe)).images
    assert np.isfinite(images).all()


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="enable_model_cpu_offload needs a CUDA accelerator")
@pytest.mark.parametrize("family", testing.TINY_FAMILIES)
def test_model_cpu_offload_with_student(family, tiny_pipeline_dirs):
    pipeline_class = testing.tiny_pipeline_class(family)
    student = _student_for(family)
    slot = adapter_for(pipeline_class.from_pretrained(tiny_pipeline_dirs[family])).encoder_slot
    on_gpu = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: student}).to("cuda")
    expected = on_gpu(PROMPT, **testing.tiny_call_kwargs(on_gpu)).images

    offloaded = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: _student_for(family)})
    offloaded.enable_model_cpu_offload()
    assert offloaded._execution_device.type == "cuda"
    images = offloaded(PROMPT, **testing.tiny_call_kwargs(offloaded)).images
    assert getattr(offloaded, slot).device.type == "cpu"  # moved back after use by the offload hooks
    np.testing.assert_allclose(images, expected, atol=1e-3)
