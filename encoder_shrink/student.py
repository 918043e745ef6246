"""The students: a small T5 (or UMT5) encoder plus the paper's projector, a drop-in for a pipeline's big encoder."""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

# `PreTrainedModel` must be a name of this module: a pipeline saved with the student inside records this
# module in model_index.json, and diffusers picks the load method by looking up `<module>.PreTrainedModel`.
from transformers import (
    AutoConfig,
    AutoModel,
    PreTrainedConfig,
    PreTrainedModel,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5PreTrainedModel, T5Stack
from transformers.models.umt5.modeling_umt5 import UMT5PreTrainedModel, UMT5Stack
from transformers.utils.generic import can_return_tuple

from encoder_shrink.configuration import (
    NON_FIELD_KEYS,
    T5_XXL_DIM,
    ShrunkLLMConfig,
    ShrunkT5Config,
    ShrunkUMT5Config,
)
from encoder_shrink.errors import IncompatibleModelError, InvalidArgumentError, WrongModelTypeError
from encoder_shrink.loading import require_folder_or_hub_id
from encoder_shrink.reference import REFERENCE_KEY_MAPPING, is_reference_config, reference_to_student_config
from encoder_shrink.student_kinds import kind_of_student, register_student_kind
from encoder_shrink.weights import WeightsError, safetensors_files

logger = logging.getLogger(__name__)

__all__ = ["PreTrainedModel", "ShrunkT5EncoderModel", "ShrunkUMT5EncoderModel", "StudentMixin",
           "load_student"]

# Keys `from_pretrained` passes on to the hub when it reads a config (everything else is a loading option).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


class StudentMixin:
    r"""
    What every student adds to the encoder class its pipeline slot takes (T5EncoderModel, UMT5EncoderModel): the
    paper's projector to the teacher's width, the record of its distillation (and a warning when a pipeline calls it
    otherwise), `from_t5` (a pretrained encoder of the base class keeps its weights), safetensors-only loading with
    one-line errors, and atomic saving. Subclasses set `config_class`, `base_config_class`, `base_encoder_class` and
    `base_model_type`, and build the encoder in `__init__` before `_add_projector(config)` and `post_init()`.
    """

    base_config_class: type
    base_encoder_class: type
    base_model_type: str
    # Whether the reference implementation's checkpoint format (`T5EncoderWithProjection`) can be loaded.
    reads_reference_format = False

    def _add_projector(self, config) -> None:
        # Named as in the reference checkpoint (`final_projection.0/.3`), so both formats share the projector keys.
        hidden = getattr(config, "projector_dim", None) or config.teacher_dim
        self.final_projection = nn.Sequential(
            nn.Linear(config.d_model, hidden, bias=False),
            nn.ReLU(),
            nn.Dropout(config.projector_dropout),
            nn.Linear(hidden, config.teacher_dim, bias=False),
        )
        # Kinds of "called unlike its distillation" already warned about (each is logged once).
        self._call_warnings: set[str] = set()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is self.final_projection[0] or module is self.final_projection[3]:
            # std = fan_in ** -0.5 keeps the projected values O(1) (T5's final norm makes its output O(1)). Not scaled
            # by the T5's `initializer_factor`: diffusers' tiny test T5s set it to 0.002, which would make every
            # student embedding ~1e-9, the same for every prompt.
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            return
        super()._init_weights(module)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the embeddings `forward` returns (FLUX casts its prompt embeddings to it)."""
        return self.final_projection[-1].weight.dtype

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        r"""
        Encode tokens and project them to the teacher's width.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids from the pipeline's
                T5 tokenizer.
            attention_mask (`torch.Tensor`, *optional*): 1 for tokens to attend to (PixArt passes one).
            inputs_embeds (`torch.Tensor`, *optional*): instead of `input_ids`.
            output_hidden_states / output_attentions / return_dict: as for any transformers model.

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutput`] (or a tuple) whose `last_hidden_state` has shape
            `(batch_size, sequence_length, config.teacher_dim)` and dtype `self.dtype`.
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        # Not while exporting/compiling: comparing a symbolic length would pin the exported sequence axis.
        if tokens is not None and not (torch.compiler.is_exporting() or torch.compiler.is_compiling()):
            self._warn_if_called_differently(tokens.shape[1], attention_mask is not None)
        outputs = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        projection = self.final_projection
        embeddings = projection(outputs.last_hidden_state.to(projection[0].weight.dtype))
        return BaseModelOutput(
            last_hidden_state=embeddings, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _warn_if_called_differently(self, length: int, masked: bool) -> None:
        """Warn once when the pipeline encodes at another length or masking than the student was distilled with."""
        warned = self._call_warnings
        expected_length, expected_mask = self.config.max_sequence_length, self.config.use_attention_mask
        if expected_length is not None and length != expected_length and "length" not in warned:
            warned.add("length")
            logger.warning(
                "Student was distilled at %d tokens but is called with %d; pass max_sequence_length=%d to the "
                "pipeline.",
                expected_length,
                length,
                expected_length,
            )
        if expected_mask is not None and masked != expected_mask and "mask" not in warned:
            warned.add("mask")
            logger.warning(
                "Student was distilled %s an attention mask but is called %s one.",
                "with" if expected_mask else "without", "with" if masked else "without",
            )

    @classmethod
    def from_t5(
        cls,
        t5: PreTrainedModel | PreTrainedConfig | str | os.PathLike,
        teacher_dim: int = T5_XXL_DIM,
        **config_kwargs,
    ):
        r"""
        Build a student from an encoder of its base class (T5 for [`ShrunkT5EncoderModel`], UMT5 for
        [`ShrunkUMT5EncoderModel`]), keeping that encoder's weights (the paper's pretrained initialisation).

        Args:
            t5: a [`~transformers.T5EncoderModel`] or `T5ForConditionalGeneration` (its encoder is copied), a
                [`~transformers.T5Config`] (random weights), or the id/path of a T5 checkpoint (safetensors); the
                UMT5 equivalents for a UMT5 student.
            teacher_dim: width of the teacher's embeddings (4096 for T5-XXL).
            config_kwargs: further [`ShrunkT5Config`] fields, e.g. `pipeline_family="flux"`,
                `component="text_encoder_2"`, `max_sequence_length=512`.

        The student is float32 (master weights for training); cast it with `.to(dtype)` for inference.

        Example:

        ```python
        >>> student = ShrunkT5EncoderModel.from_t5("google/t5-v1_1-base", teacher_dim=4096)  # doctest: +SKIP
        ```
        """
        if isinstance(t5, (str, os.PathLike)):
            require_folder_or_hub_id(t5, cls.base_model_type.upper())
            config = AutoConfig.from_pretrained(t5)
            cls._require_base_config(config, f"{t5!s} is a {type(config).__name__}")
            if Path(t5).is_dir():
                safetensors_files(t5)
            t5 = cls.base_encoder_class.from_pretrained(t5, use_safetensors=True, dtype=torch.float32)
        if isinstance(t5, (StudentMixin, ShrunkT5Config, ShrunkUMT5Config, ShrunkLLMConfig)):
            raise WrongModelTypeError(
                "from_t5 got a student already; use it as it is, or pass the encoder it was built from."
            )
        if isinstance(t5, PreTrainedConfig):
            cls._require_base_config(t5, f"got a {type(t5).__name__}")
            return cls(cls._student_config(t5, teacher_dim, config_kwargs))
        if not isinstance(t5, PreTrainedModel) or not hasattr(t5, "get_encoder"):
            raise WrongModelTypeError(
                f"from_t5 expects a {cls.base_encoder_class.__name__}, a {cls.base_config_class.__name__} or an "
                f"id/path of one, got {type(t5).__name__}."
            )
        cls._require_base_config(t5.config, f"got a {type(t5).__name__}")
        student = cls(cls._student_config(t5.config, teacher_dim, config_kwargs))
        student._load_base_weights(t5)
        return student

    def _load_base_weights(self, t5: PreTrainedModel) -> None:
        """Copy a pretrained encoder's weights into the student (`from_t5`); only the projector stays fresh."""
        # Strict loads: every T5 tensor lands in the student or this raises.
        self.shared.load_state_dict(t5.get_input_embeddings().state_dict())
        self.encoder.load_state_dict(t5.get_encoder().state_dict())
        self.tie_weights()

    @classmethod
    def _require_base_config(cls, config: PreTrainedConfig, what: str) -> None:
        if not isinstance(config, cls.base_config_class) or config.model_type != cls.base_model_type:
            kinds = {"t5": "a T5 (model_type 't5': T5, T5 v1.1, FLAN-T5)", "umt5": "a UMT5 (model_type 'umt5')"}
            raise WrongModelTypeError(
                f"from_t5 of {cls.__name__} needs {kinds[cls.base_model_type]}, but {what} "
                f"(model_type {getattr(config, 'model_type', None)!r})."
            )

    @classmethod
    def _student_config(cls, base_config: PreTrainedConfig, teacher_dim: int, config_kwargs: dict):
        fields = {k: v for k, v in base_config.to_dict().items() if k not in NON_FIELD_KEYS}
        fields.update(config_kwargs, teacher_dim=teacher_dim)
        return cls.config_class(**fields)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""
        Load a student saved by `save_pretrained` (or, for [`ShrunkT5EncoderModel`], a checkpoint of the reference
        implementation, `T5EncoderWithProjection`, e.g. `LifuWang/DistillT5`) from a local folder or the hub.

        Loads safetensors only. Missing, truncated or pickle-only weights and folders that hold another kind of
        model raise a one-line `ValueError` instead of loading a partly random model. All options of
        [`~transformers.PreTrainedModel.from_pretrained`] (`dtype`, `device_map`, ...) apply.

        Example:

        ```python
        >>> student = ShrunkT5EncoderModel.from_pretrained("out/student", dtype=torch.bfloat16)  # doctest: +SKIP
        ```
        """
        path = pretrained_model_name_or_path
        require_folder_or_hub_id(path, "student")
        if kwargs.get("use_safetensors") is False:
            # What `DiffusionPipeline.from_pretrained(..., use_safetensors=False)` passes to every component: the
            # original encoders then load whatever weights there are; a student has only safetensors ones.
            logger.info("%s loads safetensors only; use_safetensors=False reads them all the same.", cls.__name__)
        kwargs["use_safetensors"] = True
        local = Path(path) / kwargs.get("subfolder", "")
        if local.is_dir():
            safetensors_files(local)
        if kwargs.get("config") is None:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config_dict, _ = PreTrainedConfig.get_config_dict(path, **hub_kwargs)
            if cls.reads_reference_format and is_reference_config(config_dict):
                kwargs["config"] = reference_to_student_config(config_dict)
                kwargs["key_mapping"] = REFERENCE_KEY_MAPPING
            elif (kind := kind_of_student(config_dict.get("model_type") or "")) and cls is not kind.student_class:
                other = kind.student_class.__name__
                raise IncompatibleModelError(
                    f"{path} holds a {other}, not a {cls.__name__}; load it with {other}.from_pretrained or "
                    "encoder_shrink.load_student."
                )
            elif config_dict.get("model_type") != cls.config_class.model_type:
                raise IncompatibleModelError(
                    f"{path} holds a {config_dict.get('model_type', 'unknown')!r} model, not a "
                    f"{cls.config_class.model_type!r} student encoder; build one with {cls.__name__}.from_t5(...)."
                )
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
        incomplete = sorted(info["missing_keys"]) + [key for key, *_ in info.get("mismatched_keys", [])]
        if incomplete:
            raise WeightsError(
                f"{path} does not hold a complete student: {len(incomplete)} weights are missing or of the wrong "
                f"shape ({', '.join(incomplete[:3])}{', ...' if len(incomplete) > 3 else ''}); re-save it with "
                "save_pretrained."
            )
        if info["unexpected_keys"]:
            logger.warning("Ignored %d unexpected weights in %s.", len(info["unexpected_keys"]), path)
        return (model, info) if want_info else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        max_shard_size: int | str = "50GB",
        variant: str | None = None,
        safe_serialization: bool = True,
        **kwargs,
    ) -> None:
        r"""
        Write `config.json` and `model.safetensors` (safetensors only; `model.<variant>.safetensors` with a `variant`,
        sharded past `max_shard_size`) to `save_directory`.

        The arguments diffusers passes when a pipeline with the student inside is saved are named here, because
        diffusers passes them only to methods whose signature names them (`pipe.save_pretrained(dir, variant="fp16")`
        then writes the student's variant file like every other component's). Files are written to a temporary folder
        beside `save_directory` and then moved in, so an interrupted save never leaves a half-written weight file;
        weight files of an earlier save of the same variant that the new one does not have are removed.

        Example:

        ```python
        >>> student.save_pretrained("out/student")  # doctest: +SKIP
        ```
        """
        if kwargs.get("push_to_hub"):
            raise InvalidArgumentError(
                "save_pretrained(push_to_hub=True) is not supported here; save, then upload the folder."
            )
        if not safe_serialization:
            # What `DiffusionPipeline.save_pretrained(..., safe_serialization=False)` passes to every component whose
            # signature names it (the original encoders ignore it in transformers 5): the student never writes pickle.
            logger.warning("%s is saved as safetensors only (safe_serialization=False asked for pickle).",
                        type(self).__name__)
        if not is_main_process:
            return
        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            # Our key names are the canonical format, also for a model loaded from the reference format.
            kwargs["save_original_format"] = False
            super().save_pretrained(staging, max_shard_size=max_shard_size, variant=variant, **kwargs)
            target.mkdir(exist_ok=True)
            written = {p.name for p in staging.iterdir()}
            same_variant = _weight_file_pattern(variant)
            for stale in target.iterdir():
                if stale.name not in written and same_variant.fullmatch(stale.name):
                    stale.unlink()
            for name in sorted(written):
                os.replace(staging / name, target / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _weight_file_pattern(variant: str | None) -> re.Pattern:
    """Names transformers gives the weight files (shards, index) of a save with `variant` (or without one)."""
    tag = rf"\.{re.escape(variant)}" if variant else ""
    return re.compile(rf"model{tag}(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index{tag}\.json")


class ShrunkT5EncoderModel(StudentMixin, T5EncoderModel):
    r"""
    A T5 encoder followed by the projector of "Scaling Down Text Encoders of Text-to-Image Diffusion Models"
    (`Linear(d_model -> teacher_dim) -> ReLU -> Dropout(0.1) -> Linear(teacher_dim -> teacher_dim)`, no biases), so
    it returns embeddings of the teacher's width and a pipeline cannot tell it from its T5-XXL.

    It *is a* [`~transformers.T5EncoderModel`], so diffusers accepts it silently in `text_encoder_2=` (FLUX),
    `text_encoder_3=` (SD3) and `text_encoder=` (PixArt). Its forward takes what those pipelines pass
    (`input_ids`, `attention_mask`, `output_hidden_states`, `return_dict`) and returns `last_hidden_state` of width
    `config.teacher_dim` (`hidden_states`, when asked for, are the student's own, of width `config.d_model`).

    Example:

    ```python
    >>> from encoder_shrink import ShrunkT5Config, ShrunkT5EncoderModel
    >>> student = ShrunkT5EncoderModel(ShrunkT5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
    ...                                              vocab_size=100, teacher_dim=64))
    >>> student(torch.tensor([[5, 6, 1]])).last_hidden_state.shape
    torch.Size([1, 3, 64])
    ```
    """

    config_class = ShrunkT5Config
    base_config_class, base_encoder_class, base_model_type = T5Config, T5EncoderModel, "t5"
    reads_reference_format = True
    # Keeps `device_map="auto"` from splitting a T5 block (its residual stream) across devices.
    _no_split_modules = ["T5Block"]

    def __init__(self, config: ShrunkT5Config):
        # Built here instead of through T5EncoderModel.__init__ so that `post_init` (weight init, tying) runs once,
        # after the projector exists.
        T5PreTrainedModel.__init__(self, config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        config.use_cache = False
        config.is_encoder_decoder = False
        self.encoder = T5Stack(config)
        self._add_projector(config)
        self.post_init()


class ShrunkUMT5EncoderModel(StudentMixin, UMT5EncoderModel):
    r"""
    A UMT5 encoder followed by the same projector as [`ShrunkT5EncoderModel`]: the student of the pipelines whose slot
    holds a UMT5 (Wan and SkyReels-V2's UMT5-XXL, AuraFlow's pile-t5-xl). It *is a*
    [`~transformers.UMT5EncoderModel`], so diffusers accepts it without warnings, and keeps the teacher's tokenizer
    (UMT5's 256 k vocabulary: the embedding table is most of a UMT5-base student).

    Example:

    ```python
    >>> from encoder_shrink import ShrunkUMT5Config, ShrunkUMT5EncoderModel
    >>> student = ShrunkUMT5EncoderModel(ShrunkUMT5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
    ...                                                  vocab_size=100, teacher_dim=64))
    >>> student(torch.tensor([[5, 6, 1]])).last_hidden_state.shape
    torch.Size([1, 3, 64])
    ```
    """

    config_class = ShrunkUMT5Config
    base_config_class, base_encoder_class, base_model_type = UMT5Config, UMT5EncoderModel, "umt5"
    _no_split_modules = ["UMT5Block"]

    def __init__(self, config: ShrunkUMT5Config):
        # As UMT5EncoderModel.__init__, with the projector built before `post_init`.
        UMT5PreTrainedModel.__init__(self, config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        encoder_config = copy.deepcopy(config)
        encoder_config.use_cache = False
        encoder_config.is_encoder_decoder = False
        self.encoder = UMT5Stack(encoder_config)
        self._add_projector(config)
        self.post_init()


register_student_kind("t5", ShrunkT5EncoderModel,
                      lambda config: config.model_type in ("t5", ShrunkT5Config.model_type),
                      description="T5 encoder blocks and a projector, for T5 teachers (T5-XXL, ...)")
register_student_kind("umt5", ShrunkUMT5EncoderModel,
                      lambda config: config.model_type in ("umt5", ShrunkUMT5Config.model_type),
                      recipe_size="umt5-base", runtime_model=UMT5EncoderModel,
                      description="UMT5 encoder blocks and a projector, for UMT5 teachers (UMT5-XXL, Pile-T5)")


def load_student(path: str | os.PathLike, **kwargs):
    r"""
    The torch student saved in `path`, of the class its config names (T5 or UMT5 student; the reference
    implementation's checkpoints are T5 students). Options go to `from_pretrained`.

    Example:

    ```python
    >>> student = load_student("out/student")  # doctest: +SKIP
    ```
    """
    require_folder_or_hub_id(path, "student")
    model_type = None
    config_file = Path(path) / kwargs.get("subfolder", "") / "config.json"
    if config_file.is_file():
        import json

        model_type = json.loads(config_file.read_text()).get("model_type")
    kind = kind_of_student(model_type) if model_type else None
    return (kind.student_class if kind else ShrunkT5EncoderModel).from_pretrained(path, **kwargs)


AutoConfig.register(ShrunkT5Config.model_type, ShrunkT5Config)
AutoModel.register(ShrunkT5Config, ShrunkT5EncoderModel)
AutoConfig.register(ShrunkUMT5Config.model_type, ShrunkUMT5Config)
AutoModel.register(ShrunkUMT5Config, ShrunkUMT5EncoderModel)
