"""ShrunkLLMEncoderModel: T5 blocks over a compact embedding that return the hidden states an LLM teacher gives."""

from __future__ import annotations

import copy
import hashlib
import logging

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, T5Config, T5EncoderModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5PreTrainedModel, T5Stack

from encoder_shrink.configuration import ShrunkLLMConfig
from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.student import StudentMixin
from encoder_shrink.student_kinds import register_student_kind

logger = logging.getLogger(__name__)

__all__ = ["FactorisedEmbedding", "LLMRuntimeOutputs", "LayerFeatures", "ShrunkLLMEncoderModel", "layer_features",
           "tokenizer_fingerprint"]


def tokenizer_fingerprint(tokenizer) -> str:
    """
    A short digest of a tokenizer's vocabulary (every token and its id): two tokenizers that split text into the same
    ids have the same fingerprint. A student records its teacher's, so a pipeline with another tokenizer is refused.

    Example:

    ```python
    >>> from encoder_shrink.tiny import tiny_llm_tokenizer
    >>> tokenizer_fingerprint(tiny_llm_tokenizer()) == tokenizer_fingerprint(tiny_llm_tokenizer())
    True
    ```
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(repr(vocab).encode("utf-8")).hexdigest()[:16]


class FactorisedEmbedding(nn.Module):
    r"""
    A token embedding factorised through a small rank: `table` (`vocab_size x rank`) then `up` (`rank -> d_model`).
    An LLM's 131-256 k-token vocabulary at T5-base width would be 100-200 M parameters on its own; at rank 256 it is
    34-66 M. `rank=None` keeps a full `vocab_size x d_model` table (`up` is then the identity).

    Example:

    ```python
    >>> FactorisedEmbedding(1000, 8, 32)(torch.tensor([[1, 2]])).shape
    torch.Size([1, 2, 32])
    ```
    """

    def __init__(self, vocab_size: int, rank: int | None, dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, rank or dim)
        self.up = nn.Linear(rank, dim, bias=False) if rank else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        """The table's weight (what `get_input_embeddings().weight` readers such as dtype checks look at)."""
        return self.table.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.up(self.table(input_ids))


class LayerFeatures(tuple):
    """
    The `hidden_states` a student of an LLM returns: as long as the teacher's tuple, holding the distilled layers at
    the teacher's indices. Reading a layer the student was not distilled for raises a one-line error naming the layers
    it has, instead of handing the pipeline a `None`.
    """

    def __new__(cls, features: dict[int, torch.Tensor], length: int | None = None, model_type: str | None = None):
        if length is None:
            # Rebuilt from its items, as accelerate's `send_to_device` rebuilds every tuple (sequential CPU offload):
            # the layers stay where they were, the missing ones still refuse to be read.
            layers = tuple(features)
            distilled = [i for i, layer in enumerate(layers) if layer is not None]
        else:
            layers, distilled = tuple(features.get(i) for i in range(length)), sorted(features)
        self = super().__new__(cls, layers)
        self.distilled = distilled
        self.model_type = model_type
        return self

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if item is None:
            position = index if index >= 0 else len(self) + index
            teacher = f"{self.model_type} " if self.model_type else ""
            raise IncompatibleModelError(
                f"the pipeline reads hidden_states[{index}] (layer {position}) but this student reproduces its "
                f"{teacher}teacher's layers {self.distilled} only; distil a student for the layers this pipeline "
                "reads (or pass the layers it was distilled for, e.g. text_encoder_out_layers)."
            )
        return item


def layer_features(config: ShrunkLLMConfig, features: torch.Tensor) -> LayerFeatures:
    """The `hidden_states` tuple of a student with `config` whose `last_hidden_state` is `features`."""
    chunks = features.split(config.teacher_hidden_size, dim=-1)
    return LayerFeatures(dict(zip(config.teacher_layers, chunks, strict=True)), config.teacher_num_hidden_states,
                         config.teacher_model_type)


class ShrunkLLMEncoderModel(StudentMixin, T5PreTrainedModel):
    r"""
    The student of an LLM text encoder (FLUX.2's Mistral-Small, Qwen-Image's Qwen2.5-VL, Z-Image's Qwen3, Sana's and
    Lumina2's Gemma-2): T5 encoder blocks (bidirectional, masked) over a factorised embedding of the *teacher's*
    vocabulary, and the paper's projector to the width of the teacher layers the pipeline reads.

    The pipeline's own prompt code runs unchanged with it in the slot: it takes the teacher's token ids (chat template
    and all), `attention_mask`, `output_hidden_states` and `use_cache`; `hidden_states[i]` holds what the teacher's
    `hidden_states[i]` holds for each distilled layer `i` (FLUX.2 reads 10, 20 and 30), and `last_hidden_state` holds
    the distilled layers side by side (`config.teacher_dim` wide; for one layer, that layer).

    Example:

    ```python
    >>> from encoder_shrink import ShrunkLLMConfig, ShrunkLLMEncoderModel
    >>> student = ShrunkLLMEncoderModel(ShrunkLLMConfig(
    ...     d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=1000, embedding_rank=8,
    ...     teacher_hidden_size=16, teacher_dim=48, teacher_layers=[10, 20, 30], teacher_num_hidden_states=41))
    >>> output = student(torch.tensor([[5, 6, 1]]), output_hidden_states=True)
    >>> output.last_hidden_state.shape, output.hidden_states[20].shape, len(output.hidden_states)
    (torch.Size([1, 3, 48]), torch.Size([1, 3, 16]), 41)
    ```
    """

    config_class = ShrunkLLMConfig
    base_config_class, base_encoder_class, base_model_type = T5Config, T5EncoderModel, "t5"
    _no_split_modules = ["T5Block"]

    def __init__(self, config: ShrunkLLMConfig):
        T5PreTrainedModel.__init__(self, config)
        stack_config = copy.deepcopy(config)
        stack_config.use_cache = False
        stack_config.is_encoder_decoder = False
        stack_config.vocab_size = 1  # the stack's own table is replaced by the factorised one below
        self.encoder = T5Stack(stack_config)
        self.encoder.embed_tokens = FactorisedEmbedding(config.vocab_size, config.embedding_rank, config.d_model)
        self._add_projector(config)
        self.post_init()

    def get_input_embeddings(self) -> FactorisedEmbedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, embeddings: nn.Module) -> None:
        self.encoder.embed_tokens = embeddings

    def get_encoder(self) -> T5Stack:
        return self.encoder

    @torch.no_grad()
    def _init_weights(self, module):
        embedding = self.encoder.embed_tokens if hasattr(self, "encoder") else None
        if embedding is not None and module is embedding.table:
            init.normal_(module.weight, mean=0.0, std=1.0)  # as T5 initialises its own table
            return
        if embedding is not None and module is embedding.up:
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            return
        super()._init_weights(module)

    def _load_base_weights(self, t5: PreTrainedModel) -> None:
        # The T5's blocks and final norm; its table belongs to another tokenizer and is not used.
        state = {k: v for k, v in t5.get_encoder().state_dict().items() if not k.startswith("embed_tokens.")}
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("embed_tokens.") for k in missing):
            raise IncompatibleModelError(
                f"the T5 does not fit the student's blocks (missing {missing[:3]}, unexpected {unexpected[:3]})."
            )
        # T5 embeddings are large (v1.1 tables have a std of ~10 or more): match the new embedding's output scale.
        self._target_embedding_std = float(t5.get_input_embeddings().weight.detach().float().std())

    @torch.no_grad()
    def init_embeddings_from(self, teacher_table: torch.Tensor) -> None:
        r"""
        Initialise the factorised embedding from the teacher's token table by a low-rank projection: `table` holds
        each token's coordinates on the table's top `embedding_rank` principal directions, so tokens the teacher
        embeds alike start alike; `up` is a random map to `d_model`, scaled to the output scale of the T5 the blocks
        came from (or T5's own init scale).

        Example:

        ```python
        >>> student.init_embeddings_from(teacher.get_input_embeddings().weight)  # doctest: +SKIP
        ```
        """
        embedding = self.get_input_embeddings()
        vocab, rank = embedding.table.weight.shape
        if teacher_table.shape[0] != vocab:
            raise IncompatibleModelError(
                f"the teacher's token table has {teacher_table.shape[0]} rows but the student's vocabulary "
                f"{vocab}; build the student with vocab_size={teacher_table.shape[0]}."
            )
        table = teacher_table.detach().float().to(embedding.table.weight.device)
        centred = table - table.mean(dim=0, keepdim=True)
        if rank >= min(centred.shape):
            coordinates = centred[:, :rank] if rank <= centred.shape[1] else nn.functional.pad(
                centred, (0, rank - centred.shape[1]))
        else:
            # A randomised SVD: the top `rank` directions without a full SVD of a 131 k x 5120 table.
            _, _, directions = torch.svd_lowrank(centred, q=rank, niter=4)
            coordinates = centred @ directions
        coordinates = coordinates / coordinates.std().clamp_min(1e-12)  # unit scale, as T5's init
        embedding.table.weight.copy_(coordinates.to(embedding.table.weight.dtype))
        target = getattr(self, "_target_embedding_std", 1.0)
        if isinstance(embedding.up, nn.Linear):
            output_std = embedding(torch.arange(min(vocab, 4096), device=table.device)).float().std()
            embedding.up.weight.mul_(target / output_std.clamp_min(1e-12))
        else:
            embedding.table.weight.mul_(target)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        r"""
        Encode the teacher's tokens and return the teacher layers the pipeline reads.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): ids of the teacher's tokenizer,
                as the pipeline makes them (chat template included).
            attention_mask (`torch.Tensor`, *optional*): 1 (or True) for real tokens; padding is not attended to.
            output_hidden_states (`bool`, *optional*): return `hidden_states`, a [`LayerFeatures`] tuple as long as the
                teacher's, holding the distilled layers at their indices.
            kwargs: what pipelines pass to an LLM and a bidirectional encoder does not need (`use_cache`, ...).

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutput`] (or a tuple): `last_hidden_state` of shape
            `(batch_size, sequence_length, config.teacher_dim)`, the distilled layers side by side.
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        # (Compiling, exporting or planning on fake tensors, there are no token values to check.)
        values = not (torch.compiler.is_exporting() or torch.compiler.is_compiling()
                      or torch._guards.detect_fake_mode(tokens) is not None)
        if tokens is not None and values:
            self._warn_if_called_differently(tokens.shape[1], attention_mask is not None)
            if input_ids is not None and input_ids.numel() and int(input_ids.max()) >= self.config.vocab_size:
                raise IncompatibleModelError(
                    f"token id {int(input_ids.max())} is past the student's {self.config.vocab_size}-token "
                    "vocabulary: "
                    "the pipeline's tokenizer is not the one the student was distilled with."
                )
        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.long)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                              return_dict=True).last_hidden_state
        projection = self.final_projection
        features = projection(hidden.to(projection[0].weight.dtype))
        hidden_states = layer_features(self.config, features) if output_hidden_states else None
        if return_dict is False:
            return (features,) if hidden_states is None else (features, hidden_states)
        return BaseModelOutput(last_hidden_state=features, hidden_states=hidden_states)


def _is_llm_teacher(config) -> bool:
    """A decoder LLM, a VL model, or the language half of one loaded alone (`Qwen2_5_VLTextModel`: "<vl>_text")."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    text_type = getattr(config.get_text_config(), "model_type", "")
    vl_half = model_type.endswith("_text") and (
        model_type.removesuffix("_text") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    return model_type == ShrunkLLMConfig.model_type or vl_half or text_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


class LLMRuntimeOutputs:
    """
    What a runtime encoder (an exported student run outside torch) of a student of an LLM teacher adds to its
    format's runtime: like the torch student, `hidden_states` (when asked for) holds the teacher's layers at their
    indices, and a bool mask (Z-Image) is taken.
    """

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, **kwargs):
        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.long)
        features = super().forward(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   return_dict=True).last_hidden_state
        hidden_states = layer_features(self.config, features) if output_hidden_states else None
        if return_dict is False:
            return (features,) if hidden_states is None else (features, hidden_states)
        return BaseModelOutput(last_hidden_state=features, hidden_states=hidden_states)


register_student_kind("llm", ShrunkLLMEncoderModel, _is_llm_teacher,
                      runtime_mixin=LLMRuntimeOutputs,
                      description="T5 blocks over a factorised embedding of the teacher's vocabulary, for decoder-LLM "
                                  "and VL teachers (hidden states of the layers the pipeline reads)")
AutoConfig.register(ShrunkLLMConfig.model_type, ShrunkLLMConfig)
AutoModel.register(ShrunkLLMConfig, ShrunkLLMEncoderModel)
