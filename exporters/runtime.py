"""Runtime encoders of exported students: the exported-encoder base and the ONNX Runtime encoder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

# `PreTrainedModel` must be a name of this module: diffusers looks up `<module>.PreTrainedModel` to reload a
# pipeline saved with this encoder inside (see encoder_shrink.student).
from transformers import PreTrainedModel, T5EncoderModel, UMT5EncoderModel
from transformers.modeling_outputs import BaseModelOutput

from encoder_shrink.configuration import ShrunkLLMConfig, ShrunkT5Config, ShrunkUMT5Config
from encoder_shrink.errors import InputNotFoundError, InvalidArgumentError, WrongModelTypeError

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_KEY", "REPORT", "ExportedEncoder", "LLMOutputs", "OnnxShrunkLLMEncoder", "OnnxShrunkT5Encoder",
           "OnnxShrunkUMT5Encoder", "PreTrainedModel", "read_config"]

EXPORT_KEY = "export"
REPORT = "export_report.json"


def read_config(folder: str | os.PathLike) -> dict:
    """The `config.json` of a student or export folder, or a one-line error naming what is wrong with it."""
    config_file = Path(folder) / "config.json"
    if not Path(folder).exists():
        raise InputNotFoundError(f"{folder} does not exist; pass a folder written by save_pretrained or "
                                 "encoder-shrink export.")
    if not config_file.is_file():
        raise InvalidArgumentError(f"{folder} is not a student folder (no config.json); pass a folder written by "
                                   "save_pretrained or encoder-shrink export.")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(
            f"{config_file} is not valid JSON ({error.msg}); re-save or re-export the student."
        ) from None


class ExportedEncoder(T5EncoderModel):
    r"""
    Base of the encoders that run an exported student outside torch (ONNX Runtime, TensorRT). Each *is a*
    [`~transformers.T5EncoderModel`] (so diffusers accepts it in the T5 slot without warnings) but holds no torch
    weights; it returns torch tensors on the device and in the dtype it was moved to with `.to()`, wherever its
    runtime runs. Subclasses set `format` and implement `_load` and `_run`; a subclass that also derives from
    [`~transformers.UMT5EncoderModel`] with `config_class = ShrunkUMT5Config` runs the exports of UMT5 students, and
    `from_pretrained` picks it from the folder's config.
    """

    config_class = ShrunkT5Config
    _no_split_modules: list[str] = []
    # The `export.format` of the folders this class runs (config.json).
    format: str

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
        Load an exported folder of this class's format. Loading options diffusers passes (`dtype`, ...) set the dtype
        of the returned embeddings or are ignored; format-specific ones (ONNX `providers`) go to `_load`.
        """
        folder = Path(folder)
        config = read_config(folder)
        cls = cls._for_student(config.get("model_type"))
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
    def _for_student(cls, model_type: str | None) -> type[ExportedEncoder]:
        """This class or its subclass for the student kind (`shrunk_t5`, `shrunk_umt5`) an export was made from."""
        for candidate in (cls, *cls.__subclasses__()):
            if candidate.config_class.model_type == model_type:
                return candidate
        return cls

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


class OnnxShrunkT5Encoder(ExportedEncoder):
    r"""
    An exported student run by ONNX Runtime, usable wherever the torch student is. The session runs where its
    execution provider runs (CPU, or CUDA with IO binding), so a CPU-resident encoder can feed a denoiser on a GPU.

    Example:

    ```python
    >>> encoder = load_encoder("out/student-onnx-int8")  # doctest: +SKIP
    >>> pipe = FluxPipeline.from_pretrained(repo, text_encoder_2=encoder)  # doctest: +SKIP
    ```
    """

    format = "onnx"

    def __init__(self, config: ShrunkT5Config, session=None, folder: str | os.PathLike | None = None):
        super().__init__(config, folder=folder)
        self.session = session

    @classmethod
    def from_file(cls, graph: str | os.PathLike, config: ShrunkT5Config, providers: list[str] | None = None,
                  folder: str | os.PathLike | None = None) -> OnnxShrunkT5Encoder:
        """An encoder running the ONNX graph `graph` (an export's `model.onnx`) for a student with `config`."""
        import onnxruntime as ort

        if providers is None:
            available = ort.get_available_providers()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if (
                "CUDAExecutionProvider" in available and torch.cuda.is_available()) else ["CPUExecutionProvider"]
        return cls(config, session=ort.InferenceSession(str(graph), providers=providers), folder=folder)

    @classmethod
    def _load(cls, folder, config, info, providers: list[str] | None = None, **kwargs) -> OnnxShrunkT5Encoder:
        """`providers` defaults to CUDA when onnxruntime-gpu and a GPU are present, else CPU."""
        return cls.from_file(folder / info["file"], config, providers=providers, folder=folder)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            return self._run_cuda(input_ids, attention_mask)
        feeds = {"input_ids": input_ids.detach().cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def _run_cuda(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run on the CUDA execution provider with IO binding: inputs and output stay on the GPU."""
        device = torch.device("cuda", torch.cuda.current_device())
        ids = input_ids.to(device=device, dtype=torch.int64).contiguous()
        mask = attention_mask.to(device=device, dtype=torch.int64).contiguous()
        out = torch.empty((ids.shape[0], ids.shape[1], self.config.teacher_dim), device=device, dtype=torch.float32)
        binding = self.session.io_binding()
        for name, tensor in (("input_ids", ids), ("attention_mask", mask)):
            binding.bind_input(name, "cuda", device.index, np.int64, list(tensor.shape), tensor.data_ptr())
        binding.bind_output("last_hidden_state", "cuda", device.index, np.float32, list(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


class OnnxShrunkUMT5Encoder(OnnxShrunkT5Encoder, UMT5EncoderModel):
    """The ONNX Runtime encoder of a UMT5 student: a `UMT5EncoderModel` to diffusers (Wan, SkyReels-V2, AuraFlow)."""

    config_class = ShrunkUMT5Config


class LLMOutputs:
    """
    What the runtime encoder of a student of an LLM teacher adds to its format's class: like the torch student,
    `hidden_states` (when asked for) holds the teacher's layers at their indices, and a bool mask (Z-Image) is taken.
    """

    config_class = ShrunkLLMConfig

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, **kwargs):
        from encoder_shrink.llm_student import layer_features

        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.long)
        features = super().forward(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   return_dict=True).last_hidden_state
        hidden_states = layer_features(self.config, features) if output_hidden_states else None
        if return_dict is False:
            return (features,) if hidden_states is None else (features, hidden_states)
        return BaseModelOutput(last_hidden_state=features, hidden_states=hidden_states)


class OnnxShrunkLLMEncoder(LLMOutputs, OnnxShrunkT5Encoder):
    """The ONNX Runtime encoder of a student of an LLM teacher (FLUX.2, Qwen-Image, Z-Image, Sana, Lumina2)."""

    config_class = ShrunkLLMConfig
