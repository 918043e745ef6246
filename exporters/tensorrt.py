"""TensorRT engines built from exported ONNX students, and the runtime encoder that runs them on the GPU."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

# `PreTrainedModel` must be a name of this module, for diffusers to reload a pipeline saved with this encoder inside.
from transformers import PreTrainedModel  # noqa: F401
from transformers.modeling_outputs import BaseModelOutput

from encoder_shrink.configuration import ShrunkT5Config
from encoder_shrink.exporters.runtime import EXPORT_KEY, REPORT, OnnxShrunkT5Encoder, _read_config
from encoder_shrink.files import atomic_write_text

logger = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
# Builder scratch memory; T5-base-sized students build comfortably in 4 GiB.
WORKSPACE_BYTES = 4 * 1024**3


def require_tensorrt():
    """The tensorrt module, or a one-line RuntimeError when it or an NVIDIA GPU is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError("TensorRT is not installed: pip install 'encoder-shrink[tensorrt]' on a machine with an "
                           "NVIDIA GPU.") from None
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs an NVIDIA GPU, and torch sees none (torch.cuda.is_available() is False).")
    return trt


def _gpu() -> dict:
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def build_engine(
    onnx_folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_batch: int = 4,
    max_tokens: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    r"""
    Build a TensorRT engine from an `export_onnx` folder. The precision is the ONNX graph's own (fp32; fp16 with its
    fp32 regions; int8 from a static QDQ graph): networks are strongly typed, as TensorRT 11 requires. One
    optimization profile covers batch 1..`max_batch` and 1..`max_tokens` tokens (default: the export's limit),
    optimized for the student's recorded sequence length. A timing cache (`timing_cache`, read if it exists and
    updated) makes rebuilds fast. The TensorRT version and GPU are recorded, and engines built elsewhere are refused.

    Example:

    ```python
    >>> build_engine("out/student-onnx-fp16", "out/student-trt")  # doctest: +SKIP
    ```
    """
    trt = require_tensorrt()
    onnx_folder, output_dir = Path(onnx_folder), Path(output_dir)
    config = _read_config(onnx_folder)
    export = config.get(EXPORT_KEY) or {}
    if export.get("format") != "onnx":
        raise ValueError(f"{onnx_folder} is not an ONNX export; run encoder-shrink export --onnx first.")
    if export.get("precision") == "int8-dynamic":
        raise ValueError("TensorRT cannot build a dynamically quantized graph; export with int8='static' (QDQ).")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite=True.")
    max_tokens = max_tokens or export.get("max_tokens", 512)
    opt_tokens = min(config.get("max_sequence_length") or max_tokens, max_tokens)

    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # opt-in on 10.x, always on in 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_folder / export["file"])):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse {onnx_folder / export['file']}: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    builder_config.set_timing_cache(builder_config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = {"min": (1, 1), "opt": (1, opt_tokens), "max": (max_batch, max_tokens)}
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; run with TensorRT's verbose log for the reason.")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        (staging / ENGINE_FILE).write_bytes(bytes(serialized))
        cache = bytes(builder_config.get_timing_cache().serialize())
        (staging / TIMING_CACHE).write_bytes(cache)
        if timing_cache:
            Path(timing_cache).write_bytes(cache)
        config[EXPORT_KEY] = {
            "format": "tensorrt", "file": ENGINE_FILE, "precision": export.get("precision"),
            "tensorrt_version": trt.__version__, **_gpu(), "max_tokens": max_tokens, "max_batch": max_batch,
            "profile": {k: list(v) for k, v in shapes.items()}, "onnx": export,
        }
        atomic_write_text(staging / "config.json", json.dumps(config, indent=2))
        if (onnx_folder / REPORT).is_file():
            shutil.copyfile(onnx_folder / REPORT, staging / "onnx_export_report.json")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


class TensorRTShrunkT5Encoder(OnnxShrunkT5Encoder):
    r"""
    A student compiled to a TensorRT engine, usable wherever the torch student is (a `T5EncoderModel` to diffusers,
    no torch weights). Inputs and outputs stay on the GPU; embeddings are returned in the device and dtype set with
    `.to()`. An engine built with another TensorRT version or on another GPU is refused.
    """

    def __init__(self, config: ShrunkT5Config, engine=None, folder=None):
        super().__init__(config, session=None, folder=folder)
        self.engine = engine
        self.context = engine.create_execution_context() if engine is not None else None
        self._target_device = torch.device("cuda")

    @classmethod
    def from_pretrained(cls, folder, *args, **kwargs) -> TensorRTShrunkT5Encoder:
        trt = require_tensorrt()
        folder = Path(folder)
        config = _read_config(folder)
        info = config.get(EXPORT_KEY) or {}
        if info.get("format") != "tensorrt":
            raise ValueError(f"{folder} is not a TensorRT export of a student.")
        here = {"tensorrt_version": trt.__version__, **_gpu()}
        built = {key: info.get(key) for key in here}
        if built["tensorrt_version"] != here["tensorrt_version"] or built["compute_capability"] != here["compute_capability"]:
            raise ValueError(
                f"{folder} was built with TensorRT {built['tensorrt_version']} for {built['gpu']} (sm {built['compute_capability']}); "
                f"this is TensorRT {here['tensorrt_version']} on {here['gpu']} (sm {here['compute_capability']}): rebuild it "
                "with encoder-shrink export --trt."
            )
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((folder / info["file"]).read_bytes())
        if engine is None:
            raise ValueError(f"{folder / info['file']} could not be deserialized; rebuild it with encoder-shrink export --trt.")
        encoder = cls(ShrunkT5Config.from_dict(config), engine=engine, folder=folder)
        dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
        if isinstance(dtype, torch.dtype):
            encoder.to(dtype)
        return encoder

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, **kwargs):
        import tensorrt as trt

        if input_ids is None or inputs_embeds is not None:
            raise ValueError("the TensorRT encoder takes input_ids (inputs_embeds is not part of the engine).")
        info = self.export_info
        batch, tokens = input_ids.shape
        if tokens > info["max_tokens"] or batch > info["max_batch"]:
            raise ValueError(
                f"input of {batch} x {tokens} tokens is outside the engine's profile (up to {info['max_batch']} x "
                f"{info['max_tokens']}); rebuild with larger max_batch/max_tokens or pass max_sequence_length<="
                f"{info['max_tokens']} to the pipeline."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        dtypes = {trt.int32: torch.int32, trt.int64: torch.int64, trt.float32: torch.float32, trt.float16: torch.float16}
        inputs = {}
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            inputs[name] = tensor.to("cuda", dtypes[self.engine.get_tensor_dtype(name)]).contiguous()
            self.context.set_input_shape(name, tuple(inputs[name].shape))
            self.context.set_tensor_address(name, inputs[name].data_ptr())
        shape = tuple(self.context.get_tensor_shape("last_hidden_state"))
        out = torch.empty(shape, device="cuda", dtype=dtypes[self.engine.get_tensor_dtype("last_hidden_state")])
        self.context.set_tensor_address("last_hidden_state", out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed.")
        embeddings = out.to(device=self._target_device, dtype=self._target_dtype)
        output = BaseModelOutput(last_hidden_state=embeddings)
        return output if return_dict is not False else (embeddings,)


__all__ = ["PreTrainedModel", "TensorRTShrunkT5Encoder", "build_engine", "require_tensorrt"]
