"""Whether a student encoder fits a pipeline, and putting it into the pipeline's T5 slot."""

from __future__ import annotations

import logging
from typing import Any

from encoder_shrink.errors import IncompatibleModelError, WrongModelTypeError
from encoder_shrink.pipelines import PipelineAdapter, adapter_for

logger = logging.getLogger(__name__)


def check_compatible(pipe: Any, student: Any, adapter: PipelineAdapter | None = None) -> PipelineAdapter:
    r"""
    Check that `student` can replace the T5 encoder of `pipe`, and return the pipeline's adapter (`adapter`, when
    given: e.g. the `EncoderShrinker`'s, so that a traced pipeline is not traced again at its default size).

    Raises a one-line `IncompatibleModelError` / `WrongModelTypeError` when the pipeline family is unsupported, when
    the student is not an
    encoder with a config, when its output width is not the width the pipeline's denoiser consumes, or when the
    pipeline's tokenizer produces ids past the student's embedding table. Warns when the student was made for
    another family or with another masking convention.

    Example:

    ```python
    >>> adapter = check_compatible(pipe, student)  # doctest: +SKIP
    >>> adapter.encoder_slot
    'text_encoder_2'
    ```
    """
    adapter = adapter if adapter is not None else adapter_for(pipe)
    config = getattr(student, "config", None)
    width = getattr(config, "teacher_dim", None)
    if width is None:
        raise WrongModelTypeError(
            f"{type(student).__name__} is not a student encoder (its config has no teacher_dim); "
            "build one with ShrunkT5EncoderModel.from_t5(...) or load one with "
            "ShrunkT5EncoderModel.from_pretrained(...)."
        )
    adapter.check_student(student)
    expected = adapter.conditioning_width
    if width != expected:
        raise IncompatibleModelError(
            f"Student returns {width}-dim embeddings but {type(pipe).__name__}.transformer expects "
            f"{adapter.conditioning_width_key}={expected}; build the student with teacher_dim={expected}."
        )
    tokenizer = adapter.tokenizer
    vocab_size = getattr(config, "vocab_size", None)
    if tokenizer is not None and vocab_size is not None and len(tokenizer) > vocab_size:
        raise IncompatibleModelError(
            f"{type(pipe).__name__}.{adapter.tokenizer_slot} has {len(tokenizer)} tokens but the student's embedding "
            f"table has {vocab_size} rows; build the student from a T5 that uses the same tokenizer."
        )
    family = getattr(config, "pipeline_family", None)
    if family is not None and family != adapter.name:
        logger.warning("Student was distilled for %r but is used in a %r pipeline.", family, adapter.name)
    masked = getattr(config, "use_attention_mask", None)
    if masked is not None and masked != adapter.uses_attention_mask:
        logger.warning(
            "Student was distilled %s an attention mask but %s pipelines call the encoder %s one.",
            "with" if masked else "without", adapter.name, "with" if adapter.uses_attention_mask else "without",
        )
    return adapter


def swap_text_encoder(pipe: Any, student: Any) -> Any:
    r"""
    Put `student` into the T5 slot of `pipe` (after [`check_compatible`]) and return the encoder it replaced.

    The pipeline's config is updated too, so `pipe.save_pretrained` writes the student. Equivalent to
    `FluxPipeline.from_pretrained(path, text_encoder_2=student)` for a pipeline already in memory.

    Example:

    ```python
    >>> teacher = swap_text_encoder(pipe, student)  # doctest: +SKIP
    ```
    """
    adapter = check_compatible(pipe, student)
    replaced = adapter.teacher
    pipe.register_modules(**{adapter.encoder_slot: student})
    return replaced
