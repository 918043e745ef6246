"""Student kinds: which student class shrinks which kind of teacher encoder (T5, UMT5, decoder LLM), one registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.registry import Registry


@dataclass(frozen=True)
class StudentKind:
    """
    One kind of student.

    Args:
        name: the kind's name (`"t5"`, `"umt5"`, `"llm"`), as adapters' `student_kind` and traces' reports name it.
        student_class: the student class itself (a `PreTrainedModel` with the `StudentMixin`).
        teaches: whether a teacher of this transformers config is shrunk into this kind.
        recipe_size: the T5 configuration (`encoder_shrink.benchmarks.synthetic.T5_CONFIGS`) the `<family>-t5base`
            recipes start this kind's student from.
        description: one line for docs and `inspect`.
        runtime_mixin: a class placed first in the bases of this kind's runtime encoders (an exported student run
            outside torch), for what the kind's outputs add (the LLM students' `hidden_states`).
        runtime_model: the transformers class diffusers expects in this kind's slot, placed last in those bases
            (`UMT5EncoderModel`; T5's is the runtime encoders' own base).
    """

    name: str
    student_class: type
    teaches: Callable[[Any], bool]
    recipe_size: str = "t5-base"
    description: str = ""
    runtime_mixin: type | None = None
    runtime_model: type | None = None

    def __post_init__(self):
        if not isinstance(self.student_class, type):
            raise InvalidArgumentError(
                f"StudentKind(student_class={self.student_class!r}): pass the class itself, not its name.")

    @property
    def model_type(self) -> str:
        """The `model_type` of the student's config (`"shrunk_t5"`, ...)."""
        return self.student_class.config_class.model_type


STUDENT_KINDS: Registry[StudentKind] = Registry("student kind")
# The modules that register the built-in kinds, imported on the first lookup (so that this registry is cheap to
# import, as transformers' `CONFIG_MAPPING_NAMES` is).
_BUILT_IN = ("encoder_shrink.student", "encoder_shrink.llm_student")


def register_student_kind(name: str, student_class: type, teaches: Callable[[Any], bool], *,
                          recipe_size: str = "t5-base", description: str = "", runtime_mixin: type | None = None,
                          runtime_model: type | None = None) -> StudentKind:
    """
    Register a student kind next to its student class. A taken name raises.

    Example:

    ```python
    >>> register_student_kind("t5", ShrunkT5EncoderModel, lambda config: config.model_type == "t5")  # doctest: +SKIP
    ```
    """
    return STUDENT_KINDS.register(name, StudentKind(name, student_class, teaches, recipe_size, description,
                                                    runtime_mixin, runtime_model))


def _load_built_in() -> None:
    for module in _BUILT_IN:
        importlib.import_module(module)


def get_student_kind(name: str) -> StudentKind:
    """The registered student kind `name`."""
    _load_built_in()
    return STUDENT_KINDS.get(name)


def registered_student_kinds() -> list[str]:
    """The registered kinds' names, in registration order (`['t5', 'umt5', 'llm']`)."""
    _load_built_in()
    return list(dict(STUDENT_KINDS.items()))


def kind_of_student(student: Any) -> StudentKind | None:
    """The kind of a student (instance, class or config `model_type`), or None for anything else."""
    _load_built_in()
    model_type = student if isinstance(student, str) else getattr(getattr(student, "config_class", None),
                                                                  "model_type", None)
    if not isinstance(student, (str, type)):
        model_type = getattr(getattr(student, "config", None), "model_type", model_type)
    return next((kind for kind in STUDENT_KINDS.values() if kind.model_type == model_type), None)


def kind_of_teacher(config: Any) -> StudentKind | None:
    """The first registered kind whose `teaches(config)` holds for a teacher's transformers config, or None."""
    _load_built_in()
    return next((kind for kind in STUDENT_KINDS.values() if kind.teaches(config)), None)
