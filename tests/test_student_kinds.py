"""The student-kind registry: which student class shrinks which teacher, found by reference."""

from __future__ import annotations

import pytest
from transformers import CLIPTextConfig, Qwen3Config, T5Config, UMT5Config

from encoder_shrink import ShrunkLLMEncoderModel, ShrunkT5EncoderModel, ShrunkUMT5EncoderModel, tiny
from encoder_shrink.errors import DuplicateRegistrationError, InvalidArgumentError
from encoder_shrink.pipelines import get_adapter
from encoder_shrink.student_kinds import (
    StudentKind,
    get_student_kind,
    kind_of_student,
    kind_of_teacher,
    register_student_kind,
    registered_student_kinds,
)


def test_built_in_kinds_are_the_classes_themselves():
    assert registered_student_kinds()[:3] == ["t5", "umt5", "llm"]
    assert get_student_kind("t5").student_class is ShrunkT5EncoderModel
    assert get_student_kind("umt5").student_class is ShrunkUMT5EncoderModel
    assert get_student_kind("llm").student_class is ShrunkLLMEncoderModel
    assert get_student_kind("umt5").recipe_size == "umt5-base"


@pytest.mark.parametrize(("config", "kind"), [
    (T5Config(), "t5"), (UMT5Config(), "umt5"),
    (Qwen3Config(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=1), "llm"),
    (CLIPTextConfig(), None),
])
def test_a_teacher_config_finds_its_kind(config, kind):
    found = kind_of_teacher(config)
    assert (found.name if found else None) == kind


def test_a_student_finds_its_kind_by_instance_class_or_model_type():
    student = tiny.tiny_student(student_class=ShrunkUMT5EncoderModel)
    assert kind_of_student(student).name == "umt5"
    assert kind_of_student(ShrunkT5EncoderModel).name == "t5"
    assert kind_of_student("shrunk_llm").name == "llm"
    assert kind_of_student("t5") is None  # a teacher's model_type is not a student's


def test_family_adapters_name_a_kind_whose_class_drops_into_their_slot():
    assert get_adapter("wan").student_class() is ShrunkUMT5EncoderModel
    assert get_adapter("flux2").student_class() is ShrunkLLMEncoderModel
    assert get_adapter("flux-dev").student_class() is ShrunkT5EncoderModel


def test_registering_a_kind_twice_or_by_name_raises():
    with pytest.raises(DuplicateRegistrationError, match="'t5' is already registered"):
        register_student_kind("t5", ShrunkT5EncoderModel, lambda config: False)
    with pytest.raises(InvalidArgumentError, match="pass the class itself"):
        StudentKind("t5-by-name", "ShrunkT5EncoderModel", lambda config: False)
