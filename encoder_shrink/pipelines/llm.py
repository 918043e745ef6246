"""LLMAdapter: what the families whose text encoder is an LLM share (hidden-state layers, templates, student)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.pipelines.base import PipelineAdapter

logger = logging.getLogger(__name__)

# How `encoder_texts` marks a negative prompt for `tokenize` in families that encode negatives without the prompts'
# template (Sana, Lumina2); it never reaches the tokenizer, and keeps a negative's cache row apart from a prompt's.
NEGATIVE = "\x00negative\x00"


class LLMAdapter(PipelineAdapter):
    r"""
    Base of the families whose slot holds an LLM (FLUX.2, Qwen-Image, Z-Image, Sana, Lumina2). The pipeline reads some
    of the LLM's `hidden_states` (`hidden_state_layers`, indexed as the pipeline indexes them), after wrapping each
    prompt in its template; the student ([`~encoder_shrink.ShrunkLLMEncoderModel`]) keeps the teacher's tokenizer and
    returns those layers, so the pipeline's prompt code runs unchanged with it.

    The teacher's rows (`"t5"`, the name every family uses for the slot's part) hold the layers side by side at every
    token position the encoder sees, template included: what the student's `last_hidden_state` returns. `predict`
    turns them into the denoiser's conditioning as the pipeline does (dropped template tokens, masks, selections).
    """

    student_kind = "llm"
    # `hidden_states` indices the pipeline reads, as it writes them (FLUX.2 (10, 20, 30); Z-Image (-2,)).
    hidden_state_layers: ClassVar[tuple[int, ...]]
    # Extra words of the family's templates, whole tokens of its tiny tokenizer (keeps tiny prompts short).
    template_words: ClassVar[str] = ""

    @property
    def text_config(self) -> Any:
        """The LLM's text config (the language-model half of a vision-language teacher)."""
        return self.teacher.config.get_text_config()

    def teacher_layout(self) -> dict[str, Any]:
        """
        The layers the pipeline reads, resolved on the model in the slot: the teacher's hidden-state count and width,
        or those a student in the slot records.
        """
        config = self.teacher.config
        if getattr(config, "model_type", None) == "shrunk_llm":
            count, width, model_type = (config.teacher_num_hidden_states, config.teacher_hidden_size,
                                        config.teacher_model_type)
        else:
            text = config.get_text_config()
            count, width, model_type = text.num_hidden_layers + 1, text.hidden_size, config.model_type
        layers = [layer % count for layer in self.hidden_state_layers]
        return {"teacher_layers": layers, "teacher_num_hidden_states": count, "teacher_hidden_size": width,
                "teacher_model_type": model_type}

    def student_fields(self) -> dict[str, Any]:
        from encoder_shrink.llm_student import tokenizer_fingerprint

        config = self.teacher.config
        vocab = config.vocab_size if config.model_type == "shrunk_llm" else config.get_text_config().vocab_size
        return {**self.teacher_layout(), "vocab_size": int(vocab),
                "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer)}

    def initialise_student(self, student: torch.nn.Module) -> None:
        """A new student's token embedding starts from a low-rank projection of the teacher's table."""
        table = self.teacher.get_input_embeddings().weight
        student.init_embeddings_from(table)

    def check_student(self, student: torch.nn.Module) -> None:
        """One-line errors for a student of another layout: other layers, another tokenizer, no LLM layout at all."""
        from encoder_shrink.llm_student import tokenizer_fingerprint

        config = student.config
        pipeline = type(self.pipe).__name__
        if getattr(config, "model_type", None) != "shrunk_llm":
            raise IncompatibleModelError(
                f"{pipeline} reads hidden_states{list(self.hidden_state_layers)} of an LLM; a "
                f"{type(student).__name__} does not return them: use a ShrunkLLMEncoderModel distilled for "
                f"{self.name}."
            )
        layout = self.teacher_layout()
        if list(config.teacher_layers) != layout["teacher_layers"] or (
                config.teacher_num_hidden_states != layout["teacher_num_hidden_states"]):
            raise IncompatibleModelError(
                f"the student reproduces layers {config.teacher_layers} of a {config.teacher_num_hidden_states}-state "
                f"teacher but {pipeline} reads layers {layout['teacher_layers']} of a "
                f"{layout['teacher_num_hidden_states']}-state one; distil a student for this pipeline."
            )
        fingerprint = tokenizer_fingerprint(self.tokenizer)
        if config.tokenizer_fingerprint is not None and config.tokenizer_fingerprint != fingerprint:
            raise IncompatibleModelError(
                f"{pipeline}.{self.tokenizer_slot} is not the tokenizer the student was distilled with (vocabulary "
                f"{fingerprint} vs {config.tokenizer_fingerprint}); tokens would not align: use the teacher's "
                "tokenizer or distil a student for this one."
            )

    def encoder_features(self, encoder: torch.nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The layers the pipeline reads, side by side, from an encoder call the way the pipeline makes it."""
        output = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         use_cache=False)
        return torch.cat([output.hidden_states[k] for k in self.hidden_state_layers], dim=-1)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        input_ids, mask = self.tokenize(texts, max_sequence_length)
        device = self.teacher.device
        features = self.encoder_features(self.teacher, input_ids.to(device), self.encoder_mask(mask).to(device))
        return {"t5": features}

    @classmethod
    def tiny_tokenizer(cls, chat_template: str | None = None, model_max_length: int = 2048, **kwargs):
        """The family's tiny in-memory tokenizer: the teacher's chat template, its template words as whole tokens."""
        from encoder_shrink import tiny

        words = [*cls.template_words.split(), *kwargs.pop("extra_words", ())]
        return tiny.tiny_llm_tokenizer(model_max_length, chat_template=chat_template, extra_words=words, **kwargs)

