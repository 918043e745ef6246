"""inspect_pipeline: what `EncoderShrinker` would do with a pipeline, for registered and traced families alike."""

from __future__ import annotations

import logging
from typing import Any

import torch

from encoder_shrink.errors import IncompatibleModelError

logger = logging.getLogger(__name__)

# The rank of an LLM student's factorised token table in the `<family>-t5base` recipes (flux2-t5base.yaml).
LLM_EMBEDDING_RANK = 256


def student_parameters(kind: str, teacher_dim: int, vocab_size: int | None = None, hidden_size: int | None = None,
                       size: str | None = None) -> int:
    """
    Parameters of the student the `<family>-t5base` recipes build for a teacher of `kind` whose features are
    `teacher_dim` wide: T5-base (UMT5-base for UMT5 teachers) blocks, its table (an LLM's vocabulary at rank 256
    for LLM teachers) and the projector. Counted on the meta device: nothing is allocated.

    Example:

    ```python
    >>> student_parameters("t5", 4096) > 100_000_000
    True
    ```
    """
    from transformers import T5EncoderModel, UMT5EncoderModel

    from encoder_shrink.benchmarks.synthetic import t5_config
    from encoder_shrink.student_kinds import get_student_kind

    config = t5_config(size or get_student_kind(kind).recipe_size)
    with torch.device("meta"):
        encoder = (UMT5EncoderModel if kind == "umt5" else T5EncoderModel)(config)
    count = sum(p.numel() for p in encoder.parameters())
    d_model = config.d_model
    if kind == "llm":
        count -= encoder.get_input_embeddings().weight.numel()
        count += vocab_size * LLM_EMBEDDING_RANK + LLM_EMBEDDING_RANK * d_model
        projector_hidden = hidden_size or teacher_dim
    else:
        projector_hidden = teacher_dim
    return count + d_model * projector_hidden + projector_hidden * teacher_dim


def inspect_pipeline(pipe: Any, slot: str | None = None, trace: bool = False,
                     call_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    r"""
    What `EncoderShrinker(pipe, slot=slot)` would do: the family (registered or traced), every text-encoder slot with
    its parameter count, the chosen slot, the student's kind and size, the call length and mask, the layers read,
    the text-derived denoiser inputs and calls per step, and the expected weights ratio. The trace runs for a
    registered family too (its denoiser calls are what it reports); a family the trace cannot serve shows why.

    Example:

    ```python
    >>> inspect_pipeline(pipe)["family"]  # doctest: +SKIP
    'traced:CogView4Pipeline'
    ```
    """
    from encoder_shrink.pipelines import adapter_for
    from encoder_shrink.pipelines.traced import TracedAdapter
    from encoder_shrink.student_kinds import get_student_kind

    adapter = TracedAdapter(pipe, slot=slot, call_kwargs=call_kwargs) if trace else adapter_for(
        pipe, slot=slot, call_kwargs=call_kwargs)
    traced, trace_error = (adapter, None) if getattr(adapter, "traced", False) else (None, None)
    if traced is None:
        try:
            traced = TracedAdapter(pipe, slot=adapter.encoder_slot, call_kwargs=call_kwargs)
        except IncompatibleModelError as error:
            trace_error = str(error)
    teacher = adapter.teacher
    kind = adapter.student_kind
    student_class = get_student_kind(kind).student_class.__name__
    layers = getattr(adapter, "hidden_state_layers", None)
    if layers is not None and kind == "llm":
        count = adapter.teacher_layout()["teacher_num_hidden_states"]
        layers = [layer % count for layer in layers]
    text_config = teacher.config.get_text_config()
    width = adapter.conditioning_width
    hidden = text_config.hidden_size if kind == "llm" else None
    student = student_parameters(kind, width, vocab_size=getattr(text_config, "vocab_size", None),
                                 hidden_size=hidden)
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    slots = {name: sum(p.numel() for p in module.parameters()) for name, module in pipe.components.items()
             if name.startswith("text_encoder") and isinstance(module, torch.nn.Module)}
    report = traced.report if traced is not None else None
    return {
        "pipeline": type(pipe).__name__,
        "family": adapter.name,
        "traced": bool(getattr(adapter, "traced", False)),
        "text_encoders": slots,
        "slot": adapter.encoder_slot,
        "teacher": type(teacher).__name__,
        "teacher_parameters": teacher_parameters,
        "student": student_class,
        "student_size": get_student_kind(kind).recipe_size + (
            f" (rank-{LLM_EMBEDDING_RANK} table)" if kind == "llm" else ""),
        "student_parameters": student,
        "weights_ratio": float(f"{teacher_parameters / student:.4g}"),
        # the positions the encoder sees (the widest call at per-prompt lengths; a template included)
        "call_length": adapter.encoded_length(adapter.max_sequence_length),
        # per-prompt lengths (padding to the batch's longest, a call per prompt): call_length is the widest call
        "call_length_varies": (adapter.report.variable_length if getattr(adapter, "traced", False)
                               else not (adapter.pads_prompts and adapter.fixed_call_length)),
        "attention_mask": adapter.uses_attention_mask,
        "layers_read": "last_hidden_state" if kind != "llm" else f"hidden_states{list(layers)}",
        "guidance": adapter.guidance,
        "encoder_calls": list(report.encoder_calls) if report else None,
        "denoisers": list(report.denoisers) if report else None,
        "denoiser_calls_per_step": report.calls_per_step if report else None,
        "text_derived_inputs": [list(names) for names in report.text_inputs] if report else None,
        "trace": "ok" if report else trace_error,
    }


def format_inspection(result: dict[str, Any]) -> str:
    """`inspect_pipeline`'s result as a two-column table."""
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:,}" for k, v in value.items())
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        rows.append((key, str(value)))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


__all__ = ["format_inspection", "inspect_pipeline", "student_parameters"]
