"""Runtime encoders of exported students: the exported-encoder base, and one class per (format runtime, student
kind) pair, made on first use."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from encoder_shrink.exporters.formats import EXPORT_KEY, REPORT, read_config

# `PreTrainedModel` must be a name of this module: diffusers looks up `<module>.PreTrainedModel` to reload a
# pipeline saved with a runtime encoder inside (every runtime encoder class lives in this module).
from transformers import PreTrainedModel, T5EncoderModel
from transformers.modeling_outputs import BaseModelOutput

from encoder_shrink.configuration import ShrunkT5Config
from encoder_shrink.errors import InputNotFoundError, InvalidArgumentError, UnknownNameError, WrongModelTypeError

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_KEY", "REPORT", "ExportedEncoder", "PreTrainedModel", "encoder_class", "read_config"]

class ExportedEncoder(T5EncoderModel):
    r"""
    Base of the encoders that run an exported student outside torch (ONNX Runtime, TensorRT, OpenVINO, torch bf16).
    Each *is a* [`~transformers.T5EncoderModel`] (so diffusers accepts it in the T5 slot without warnings) but holds
    no torch weights; it returns torch tensors on the device and in the dtype it was moved to with `.to()`, wherever
    its runtime runs.

    A format contributes one runtime class (`format`, `_load`, `_run`); [`encoder_class`] combines it with this base
    and the student kind's own bases (`UMT5EncoderModel` for UMT5 students, the layer outputs of LLM students), so
    a format is written once for every kind, those registered later included.
    """

    config_class = ShrunkT5Config
    _no_split_modules: list[str] = []
    # The `export.format` of the folders this class runs (config.json): the format runtime's.
    format: str
    # The format's runtime class this one combines (set by `encoder_class`).
    _runtime: type | None = None

    def __init__(self, config: ShrunkT5Config, folder: str | os.PathLike | None = None):
        # No T5 modules are built: the exported file holds the weights.
        PreTrainedModel.__init__(self, config)
        self.folder = Path(folder) if folder is not None else None
        self._target_device = torch.device("cpu")
        self._target_dtype = torch.float32
        # What the denoiser of the student's pipeline reads (see `trims_padding`); set False to encode every position.
        self.trim_padding = True

    @property
    def trims_padding(self) -> bool:
        r"""
        Whether a padded batch is encoded at its real tokens only (the columns up to its longest prompt), the output
        padded back with zeros: where the student attends with the mask and its pipeline's denoiser reads the real
        tokens only (the family's `denoiser_positions == "tokens"`: PixArt, Wan, Mochi, Allegro, ...), so a 20-token
        prompt padded to 300 costs 20 tokens. Not for Chroma, whose denoiser also reads the padding (diffusers 0.42
        gives its transformer a float 0/1 mask, which does not mask), nor where the mask does not reach the student.
        Set `trim_padding = False` to encode every position.
        """
        if not self.trim_padding or not getattr(self.config, "use_attention_mask", False):
            return False
        from encoder_shrink.pipelines import FAMILIES

        family = getattr(self.config, "pipeline_family", None)
        return family in FAMILIES and FAMILIES.get(family).denoiser_positions == "tokens"

    @property
    def export_info(self) -> dict:
        return dict(getattr(self.config, EXPORT_KEY, None) or {})

    @property
    def device(self) -> torch.device:
        return self._target_device

    @property
    def dtype(self) -> torch.dtype:
        return self._target_dtype

    def to(self, *args, **kwargs):
        """Record where (and in which dtype) returned embeddings go; the runtime itself does not move."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self._target_device = torch.device(device)
        if dtype is not None and dtype.is_floating_point:
            self._target_dtype = dtype
        return self

    def get_input_embeddings(self):
        raise NotImplementedError(f"a {self.format} encoder has no torch embeddings; use the torch student for that.")

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, **kwargs):
        if input_ids is None or inputs_embeds is not None:
            raise InvalidArgumentError(
                f"the {self.format} encoder takes input_ids (inputs_embeds is not part of the export)."
            )
        limit = self.export_info.get("max_tokens")
        if limit is not None and input_ids.shape[1] > limit:
            raise InvalidArgumentError(
                f"sequence of {input_ids.shape[1]} tokens is longer than the exported encoder's {limit}; "
                f"re-export with a larger max_tokens or pass max_sequence_length<={limit} to the pipeline."
            )
        if attention_mask is None:  # what T5 assumes without a mask: every token counts
            attention_mask = torch.ones_like(input_ids)
        start, stop = self._encoded_span(attention_mask)
        embeddings = self._run(input_ids[:, start:stop], attention_mask[:, start:stop])
        if (start, stop) != (0, input_ids.shape[1]):  # padding the denoiser never reads: zeros
            padded = embeddings.new_zeros((*input_ids.shape, embeddings.shape[-1]))
            padded[:, start:stop] = embeddings
            embeddings = padded
        embeddings = embeddings.to(device=self._target_device, dtype=self._target_dtype)
        output = BaseModelOutput(last_hidden_state=embeddings)
        return output if return_dict is not False else (embeddings,)

    def _encoded_span(self, attention_mask: torch.Tensor) -> tuple[int, int]:
        """The columns `[start, stop)` to encode: those with a real token in some row (see `trims_padding`)."""
        length = attention_mask.shape[1]
        real = attention_mask.bool().any(dim=0).nonzero().flatten().tolist() if self.trims_padding else []
        if not real:
            return 0, length
        # At least 2 positions: the exported graphs' sequence axis starts at 2.
        stop = min(length, max(real[-1] + 1, real[0] + 2))
        return max(0, min(real[0], stop - 2)), stop

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement _run")

    @classmethod
    def from_pretrained(cls, folder, *args, **kwargs) -> ExportedEncoder:
        r"""
        Load an exported folder of this class's format (diffusers calls it to reload a pipeline saved with this
        encoder inside). Loading options diffusers passes (`dtype`, ...) set the dtype of the returned embeddings or
        are ignored; format-specific ones (ONNX `providers`) go to `_load`.
        """
        if cls._runtime is None:
            raise InvalidArgumentError(
                f"{cls.__name__} runs no format; load an export with encoder_shrink.load_encoder.")
        return cls.load(folder, cls._runtime, **kwargs)

    @classmethod
    def load(cls, folder, runtime: type, **kwargs) -> ExportedEncoder:
        """The encoder of format runtime `runtime` for the exported folder `folder`, of its student's kind."""
        from encoder_shrink.student_kinds import kind_of_student

        folder = Path(folder)
        config = read_config(folder)
        kind = kind_of_student(config.get("model_type"))
        if kind is None:
            raise WrongModelTypeError(
                f"{folder} holds an export of a {config.get('model_type')!r} model, which is no registered student "
                "kind; export a student of this library."
            )
        cls = encoder_class(runtime, kind)
        info = config.get(EXPORT_KEY) or {}
        if info.get("format") != cls.format:
            raise WrongModelTypeError(
                f"{folder} is not a {cls.format} export of a student (config.json records "
                f"{info.get('format') or 'no export'}); load it with encoder_shrink.load_encoder."
            )
        if not (folder / info["file"]).is_file():
            raise InputNotFoundError(f"{folder} is incomplete: {info['file']} is missing; export the student again.")
        encoder = cls._load(folder, cls.config_class.from_dict(config), info, **kwargs)
        dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
        if isinstance(dtype, torch.dtype):
            encoder.to(dtype)
        return encoder

    @classmethod
    def _load(cls, folder: Path, config: ShrunkT5Config, info: dict, **kwargs) -> ExportedEncoder:
        raise NotImplementedError(f"{cls.__name__} does not implement _load")

    def save_pretrained(self, save_directory, is_main_process: bool = True, safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size=None, **kwargs) -> None:
        """
        Copy the exported folder (config, graph or engine, external data, report) to `save_directory`, atomically per
        file. The arguments diffusers passes when a pipeline is saved (`safe_serialization`, `variant`,
        `max_shard_size`) are accepted; an export is copied as it is, in its own precision.
        """
        if self.folder is None:
            raise InvalidArgumentError("this encoder was not loaded from a folder; export the student first.")
        target = Path(save_directory)
        if not is_main_process or target.resolve() == self.folder.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        for file in self.folder.iterdir():
            if file.is_file():
                fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=target)
                os.close(fd)
                shutil.copyfile(file, tmp)
                os.replace(tmp, target / file.name)



_CLASSES: dict[tuple[type, str], type] = {}
_NAME = re.compile(r"^(?P<runtime>\w+)For(?P<kind>[A-Z0-9_]+)$")


def encoder_class(runtime: type, kind) -> type[ExportedEncoder]:
    r"""
    The runtime encoder class of a format's `runtime` for students of `kind` (a student kind or its name): the kind's
    `runtime_mixin`, then `runtime`, [`ExportedEncoder`] and the kind's `runtime_model`, named
    `<runtime>For<KIND>` (`OnnxEncoderForUMT5`) in this module, where diffusers finds it to reload a saved pipeline.
    Made once per pair.

    Example:

    ```python
    >>> from encoder_shrink.exporters import OnnxEncoder
    >>> encoder_class(OnnxEncoder, "umt5").__name__
    'OnnxEncoderForUMT5'
    ```
    """
    from encoder_shrink.student_kinds import StudentKind, get_student_kind

    kind = kind if isinstance(kind, StudentKind) else get_student_kind(kind)
    key = (runtime, kind.name)
    if key not in _CLASSES:
        bases = (*filter(None, (kind.runtime_mixin,)), runtime, ExportedEncoder,
                 *filter(None, (kind.runtime_model,)))
        name = f"{runtime.__name__}For{kind.name.upper()}"
        _CLASSES[key] = type(name, bases, {
            "__module__": __name__, "__qualname__": name, "config_class": kind.student_class.config_class,
            "_runtime": runtime, "__doc__": f"{runtime.__name__} for {kind.name} students ({kind.description}).",
        })
    return _CLASSES[key]


def __getattr__(name: str):
    """`<runtime>For<KIND>` classes, made on first lookup (diffusers reloads saved pipelines by class name)."""
    match = _NAME.match(name)
    if match:
        import encoder_shrink.exporters  # noqa: F401  (registers the built-in formats)
        from encoder_shrink.exporters.formats import EXPORT_FORMATS

        from encoder_shrink.student_kinds import registered_student_kinds

        runtimes = {entry.runtime.__name__: entry.runtime for entry in EXPORT_FORMATS.values() if entry.runtime}
        kinds = {kind.upper(): kind for kind in registered_student_kinds()}
        if match["runtime"] in runtimes and match["kind"] in kinds:
            return encoder_class(runtimes[match["runtime"]], kinds[match["kind"]])
        if match["runtime"] in runtimes:
            raise UnknownNameError(f"{name}: no registered student kind {match['kind'].lower()!r}.")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
