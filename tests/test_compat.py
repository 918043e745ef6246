"""check_compatible and swap_text_encoder: whether a student fits a pipeline, with one-line errors."""

from __future__ import annotations

import logging

import pytest

from encoder_shrink import ShrunkT5EncoderModel, check_compatible, swap_text_encoder, tiny


@pytest.fixture
def flux(tiny_pipeline_dirs):
    return tiny.tiny_pipeline_class("flux-dev").from_pretrained(tiny_pipeline_dirs["flux-dev"])


def test_compatible_student_returns_adapter(flux):
    adapter = check_compatible(flux, tiny.tiny_student(teacher_dim=32))
    assert adapter.name == "flux-dev" and adapter.encoder_slot == "text_encoder_2"


def test_width_mismatch_is_one_line_with_the_fix(flux):
    with pytest.raises(ValueError) as error:
        check_compatible(flux, tiny.tiny_student(teacher_dim=48))
    message = str(error.value)
    assert "\n" not in message
    assert "Student returns 48-dim embeddings but FluxPipeline.transformer expects joint_attention_dim=32" in message
    assert "teacher_dim=32" in message


def test_vocabulary_too_small_is_refused(flux):
    t5 = tiny.tiny_t5_encoder(d_model=16, num_layers=1, vocab_size=50)
    student = ShrunkT5EncoderModel.from_t5(t5, teacher_dim=32)
    with pytest.raises(ValueError, match=r"tokenizer_2 has \d+ tokens but the student's embedding table has 50 rows"):
        check_compatible(flux, student)


def test_non_student_is_refused(flux):
    with pytest.raises(TypeError, match="T5EncoderModel is not a student encoder"):
        check_compatible(flux, flux.text_encoder_2)


def test_warns_on_other_family_or_masking(flux, caplog):
    student = tiny.tiny_student(teacher_dim=32, pipeline_family="pixart-alpha", use_attention_mask=True)
    with caplog.at_level(logging.WARNING, logger="encoder_shrink"):
        check_compatible(flux, student)
    assert "distilled for 'pixart-alpha' but is used in a 'flux-dev' pipeline" in caplog.text
    assert "distilled with an attention mask but flux-dev pipelines call the encoder without one" in caplog.text


def test_swap_updates_pipeline_and_saves_the_student(flux, tmp_path):
    student = tiny.tiny_student(teacher_dim=32)
    teacher = swap_text_encoder(flux, student)
    assert type(teacher).__name__ == "T5EncoderModel"
    assert flux.text_encoder_2 is student
    assert flux.config.text_encoder_2[1] == "ShrunkT5EncoderModel"
    flux.save_pretrained(tmp_path / "p")
    reloaded = type(flux).from_pretrained(tmp_path / "p")
    assert isinstance(reloaded.text_encoder_2, ShrunkT5EncoderModel)
