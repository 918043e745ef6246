"""Runtime encoders for exported students (ONNX Runtime), and `load_encoder`, which picks the right one for a folder."""

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
from transformers import PreTrainedModel, T5EncoderModel
from transformers.modeling_outputs import BaseModelOutput

from encoder_shrink.configuration import ShrunkT5Config

logger = logging.getLogger(__name__)

__all__ = ["OnnxShrunkT5Encoder", "PreTrainedModel", "load_encoder"]

EXPORT_KEY = "export"
REPORT = "export_report.json"


class OnnxShrunkT5Encoder(T5EncoderModel):
    r"""
    An exported student run by ONNX Runtime, usable wherever the torch student is: it *is a*
    [`~transformers.T5EncoderModel`] (so diffusers accepts it in `text_encoder_2=` / `text_encoder_3=` /
    `text_encoder=` without warnings) but holds no torch weights. It returns torch tensors on the device and in the
    dtype it was moved to with `.to()` (the ONNX session itself runs where its execution provider runs: CPU, or
    CUDA with IO binding), so a CPU-resident encoder can feed a denoiser on a GPU.

    Example:

    ```python
    >>> encoder = load_encoder("out/student-onnx-int8")  # doctest: +SKIP
    >>> pipe = FluxPipeline.from_pretrained(repo, text_encoder_2=encoder)  # doctest: +SKIP
    ```
    """

    config_class = ShrunkT5Config
    _no_split_modules: list[str] = []

    def __init__(self, config: ShrunkT5Config, session=None, folder: str | os.PathLike | None = None):
        # No T5 modules are built: the ONNX graph holds the weights.
        PreTrainedModel.__init__(self, config)
        self.session = session
        self.folder = Path(folder) if folder is not None else None
        self._target_device = torch.device("cpu")
        self._target_dtype = torch.float32

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
        """Record where (and in which dtype) returned embeddings go; the ONNX session does not move."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self._target_device = torch.device(device)
        if dtype is not None and dtype.is_floating_point:
            self._target_dtype = dtype
        return self

    def get_input_embeddings(self):
        raise NotImplementedError("an ONNX encoder has no torch embeddings; use the torch student for that.")

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, **kwargs):
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("the ONNX encoder takes input_ids (inputs_embeds is not part of the exported graph).")
        limit = self.export_info.get("max_tokens")
        if limit is not None and input_ids.shape[1] > limit:
            raise ValueError(
                f"sequence of {input_ids.shape[1]} tokens is longer than the exported encoder's {limit}; "
                f"re-export with a larger max_tokens or pass max_sequence_length<={limit} to the pipeline."
            )
        if attention_mask is None:  # what T5 assumes without a mask: every token counts
            attention_mask = torch.ones_like(input_ids)
        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            embeddings = self._run_cuda(input_ids, attention_mask)
        else:
            feeds = {"input_ids": input_ids.detach().cpu().numpy().astype(np.int64),
                     "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64)}
            embeddings = torch.from_numpy(self.session.run(None, feeds)[0])
        embeddings = embeddings.to(device=self._target_device, dtype=self._target_dtype)
        output = BaseModelOutput(last_hidden_state=embeddings)
        return output if return_dict is not False else (embeddings,)

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

    @classmethod
    def from_pretrained(cls, folder, *args, providers: list[str] | None = None, **kwargs) -> OnnxShrunkT5Encoder:
        r"""
        Load an exported folder (`config.json` with an `export` record, `model.onnx`). `providers` defaults to CUDA
        when onnxruntime-gpu and a GPU are present, else CPU. Loading options diffusers passes (`dtype`, ...) set the
        dtype of the returned embeddings or are ignored.
        """
        import onnxruntime as ort

        folder = Path(folder)
        config = _read_config(folder)
        info = config.get(EXPORT_KEY) or {}
        if info.get("format") != "onnx":
            raise ValueError(f"{folder} is not an ONNX export of a student (config.json has no ONNX export record).")
        model_file = folder / info["file"]
        if not model_file.is_file():
            raise ValueError(f"{folder} is incomplete: {info['file']} is missing; export the student again.")
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if (
                "CUDAExecutionProvider" in available and torch.cuda.is_available()) else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(model_file), providers=providers)
        encoder = cls(ShrunkT5Config.from_dict(config), session=session, folder=folder)
        dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
        if isinstance(dtype, torch.dtype):
            encoder.to(dtype)
        return encoder

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Copy the exported folder (config, graph, external data, report) to `save_directory`, atomically per file."""
        if self.folder is None:
            raise ValueError("this encoder was not loaded from a folder; export the student with export_onnx.")
        target = Path(save_directory)
        if target.resolve() == self.folder.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        for file in self.folder.iterdir():
            if file.is_file():
                fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=target)
                os.close(fd)
                shutil.copyfile(file, tmp)
                os.replace(tmp, target / file.name)


def _read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a student folder (no config.json); pass a folder written by "
                         "save_pretrained or encoder-shrink export.")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON ({error.msg}); re-save or re-export the student.") from None


def load_encoder(path: str | os.PathLike, **kwargs):
    r"""
    The encoder a folder holds: the torch student (`model.safetensors`, our format or the reference's), an ONNX
    Runtime encoder or a TensorRT encoder (`encoder-shrink export` folders). Each loads drop-in into a pipeline's T5
    slot.

    Example:

    ```python
    >>> from encoder_shrink import load_encoder
    >>> encoder = load_encoder("out/student-onnx")  # doctest: +SKIP
    ```
    """
    folder = Path(path)
    config = _read_config(folder)
    export = config.get(EXPORT_KEY) or {}
    if export.get("format") == "onnx":
        return OnnxShrunkT5Encoder.from_pretrained(folder, **kwargs)
    if export.get("format") == "tensorrt":
        from encoder_shrink.exporters.tensorrt import TensorRTShrunkT5Encoder

        return TensorRTShrunkT5Encoder.from_pretrained(folder, **kwargs)
    if export:
        raise ValueError(f"{folder} holds a {export.get('format')!r} export, which this version cannot run.")
    from encoder_shrink.student import ShrunkT5EncoderModel

    return ShrunkT5EncoderModel.from_pretrained(folder, **kwargs)
