"""The `tensorrt` export format: engines built from ONNX exports of students, and the encoder that runs them."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from encoder_shrink.exporters.formats import (
    EXPORT_KEY,
    REPORT,
    Backend,
    export,
    read_config,
    register_export_format,
)
from encoder_shrink.exporters.onnx_export import OnnxExportConfig

from encoder_shrink.errors import (
    BackendUnavailableError,
    IncompatibleModelError,
    InvalidArgumentError,
    OutputExistsError,
    WrongModelTypeError,
)
from encoder_shrink.files import atomic_dir, atomic_path, atomic_write_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
# Builder scratch memory; T5-base-sized students build comfortably in 4 GiB.
WORKSPACE_BYTES = 4 * 1024**3


def _tensorrt_unavailable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'encoder-shrink[tensorrt]' on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU, and torch sees none (torch.cuda.is_available() is False)"
    return None


def require_tensorrt():
    """The tensorrt module, or a one-line `BackendUnavailableError` when it or an NVIDIA GPU is missing."""
    reason = _tensorrt_unavailable()
    if reason:
        raise BackendUnavailableError(f"TensorRT cannot run here: {reason}.")
    import tensorrt as trt

    return trt


def _gpu() -> dict:
    import torch

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
    Build a TensorRT engine from an `onnx` export folder. The precision is the ONNX graph's own (fp32; fp16 with its
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
    config = read_config(onnx_folder)
    source = config.get(EXPORT_KEY) or {}
    if source.get("format") != "onnx":
        raise WrongModelTypeError(f"{onnx_folder} is not an ONNX export; run encoder-shrink export --onnx first.")
    if source.get("precision") == "int8-dynamic":
        raise InvalidArgumentError(
            "TensorRT cannot build a dynamically quantized graph; export with int8='static' (QDQ)."
        )
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite=True.")
    with atomic_dir(output_dir) as staging:
        _build(trt, onnx_folder, config, staging, max_batch, max_tokens, timing_cache)
    return output_dir


def _build(trt, onnx_folder: Path, config: dict, staging: Path, max_batch: int, max_tokens: int | None,
           timing_cache) -> None:
    """Parse the ONNX graph, build one engine for the profile, and write it with its config and reports."""
    source = config[EXPORT_KEY]
    max_tokens = max_tokens or source.get("max_tokens", 512)
    opt_tokens = min(config.get("max_sequence_length") or max_tokens, max_tokens)
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # opt-in on 10.x, always on in 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_folder / source["file"])):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InvalidArgumentError(f"TensorRT could not parse {onnx_folder / source['file']}: {errors}")
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
        raise BackendUnavailableError(
            "TensorRT failed to build the engine; run with TensorRT's verbose log for the reason."
        )
    (staging / ENGINE_FILE).write_bytes(bytes(serialized))
    cache = bytes(builder_config.get_timing_cache().serialize())
    (staging / TIMING_CACHE).write_bytes(cache)
    if timing_cache:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(cache)
    config = dict(config)
    config[EXPORT_KEY] = {
        "format": "tensorrt", "file": ENGINE_FILE, "precision": source.get("precision"),
        "tensorrt_version": trt.__version__, **_gpu(), "max_tokens": max_tokens, "max_batch": max_batch,
        "profile": {k: list(v) for k, v in shapes.items()}, "onnx": source,
    }
    atomic_write_text(staging / "config.json", json.dumps(config, indent=2))
    if (onnx_folder / REPORT).is_file():
        shutil.copyfile(onnx_folder / REPORT, staging / "onnx_export_report.json")


class TensorRTEncoder:
    r"""
    The `tensorrt` format's runtime: a student compiled to a TensorRT engine, usable wherever the torch student is
    (no torch weights). Inputs and outputs stay on the GPU; embeddings are returned in the device and dtype set with
    `.to()`. An engine built with another TensorRT version or on another GPU is refused.
    """

    format = "tensorrt"

    def __init__(self, config, engine=None, folder=None):
        import torch

        super().__init__(config, folder=folder)
        self.engine = engine
        self.context = engine.create_execution_context() if engine is not None else None
        self._target_device = torch.device("cuda")

    @classmethod
    def _load(cls, folder, config, info, **kwargs):
        trt = require_tensorrt()
        here = {"tensorrt_version": trt.__version__, **_gpu()}
        built = {key: info.get(key) for key in here}
        if (built["tensorrt_version"] != here["tensorrt_version"]
                or built["compute_capability"] != here["compute_capability"]):
            raise IncompatibleModelError(
                f"{folder} was built with TensorRT {built['tensorrt_version']} for {built['gpu']} (sm "
                f"{built['compute_capability']}); this is TensorRT {here['tensorrt_version']} on {here['gpu']} (sm "
                f"{here['compute_capability']}): rebuild it with encoder-shrink export --trt."
            )
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            (folder / info["file"]).read_bytes()
        )
        if engine is None:
            raise IncompatibleModelError(
                f"{folder / info['file']} could not be deserialized; rebuild it with encoder-shrink export --trt."
            )
        return cls(config, engine=engine, folder=folder)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import tensorrt as trt
        import torch

        info = self.export_info
        batch, tokens = input_ids.shape
        if tokens > info["max_tokens"] or batch > info["max_batch"]:
            raise InvalidArgumentError(
                f"input of {batch} x {tokens} tokens is outside the engine's profile (up to {info['max_batch']} x "
                f"{info['max_tokens']}); rebuild with larger max_batch/max_tokens or pass max_sequence_length<="
                f"{info['max_tokens']} to the pipeline."
            )
        dtypes = {
            trt.int32: torch.int32,
            trt.int64: torch.int64,
            trt.float32: torch.float32,
            trt.float16: torch.float16,
        }
        inputs = {}
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            inputs[name] = tensor.to("cuda", dtypes[self.engine.get_tensor_dtype(name)]).contiguous()
            self.context.set_input_shape(name, tuple(inputs[name].shape))
            self.context.set_tensor_address(name, inputs[name].data_ptr())
        shape = tuple(self.context.get_tensor_shape("last_hidden_state"))
        out = torch.empty(shape, device="cuda", dtype=dtypes[self.engine.get_tensor_dtype("last_hidden_state")])
        self.context.set_tensor_address("last_hidden_state", out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise BackendUnavailableError("TensorRT execution failed.")
        return out


@dataclass
class TensorRTExportConfig:
    r"""
    Options of the `tensorrt` export format: the student is exported to ONNX with `onnx` (its precision is the
    engine's: fp32, fp16, or int8 from a static QDQ graph) into `onnx_dir` (default: the output folder's name plus
    `-onnx`, beside it), then built into an engine for batches up to `max_batch` and `max_tokens` tokens.

    Example:

    ```python
    >>> TensorRTExportConfig(onnx=OnnxExportConfig(fp16=True)).onnx.precision
    'fp16'
    ```
    """

    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    max_batch: int = 4
    max_tokens: int | None = None
    timing_cache: str | None = None
    onnx_dir: str | None = None

    def __post_init__(self):
        if not isinstance(self.onnx, OnnxExportConfig):
            raise InvalidArgumentError(f"onnx={self.onnx!r} must be an OnnxExportConfig.")
        if self.onnx.int8 == "dynamic":
            raise InvalidArgumentError("TensorRT cannot build a dynamically quantized graph; use int8='static' (QDQ).")
        if self.max_batch < 1:
            raise InvalidArgumentError(f"max_batch={self.max_batch!r} must be >= 1.")

    @classmethod
    def from_options(cls, options: dict, flags: dict) -> TensorRTExportConfig:
        """Command-line options: the ONNX ones configure the ONNX export the engine is built from."""
        onnx_fields = {f.name for f in dataclasses.fields(OnnxExportConfig)}
        own = {f.name for f in dataclasses.fields(cls)} - {"onnx"}
        unused = [key for key in options if key not in onnx_fields | own]
        if unused:
            names = ", ".join(flags.get(key, key) for key in unused)
            raise InvalidArgumentError(f"{names} does not apply to --format tensorrt; drop it.")
        onnx = OnnxExportConfig(**{k: v for k, v in options.items() if k in onnx_fields})
        return cls(onnx=onnx, **{k: v for k, v in options.items() if k in own})


def _export_tensorrt(student, staging: Path, config: TensorRTExportConfig, context) -> None:
    """The `tensorrt` format's handler: the ONNX export beside the output folder, then the engine into `staging`."""
    trt = require_tensorrt()
    onnx_dir = Path(config.onnx_dir) if config.onnx_dir else context.output_dir.with_name(
        context.output_dir.name + "-onnx")
    if not (onnx_dir / "config.json").is_file():
        export(student, onnx_dir, config.onnx, pipeline=context.pipeline, tokenizer=context.tokenizer,
               overwrite=True)
    _build(trt, onnx_dir, read_config(onnx_dir), staging, config.max_batch, config.max_tokens, config.timing_cache)


def _trt_config(options) -> TensorRTExportConfig:
    """The engine of a backend: built from the fp16 ONNX graph, for `options`' batch and length."""
    work = options.work
    tokens = max(options.tokens, 64) if options.tokens is not None else None
    return TensorRTExportConfig(
        onnx=OnnxExportConfig(fp16=True) if tokens is None else OnnxExportConfig(fp16=True, max_tokens=tokens),
        max_batch=options.batch, max_tokens=options.tokens,
        timing_cache=str(work / "trt.cache") if work else None,
        onnx_dir=str(work / "onnx-fp16-trt-source") if work else None)


register_export_format(
    "tensorrt", TensorRTExportConfig, _export_tensorrt, runtime=TensorRTEncoder, unavailable=_tensorrt_unavailable,
    description="a TensorRT engine built from the ONNX export (NVIDIA GPU), parity-checked through its ONNX graph",
    backends=(Backend("trt", _trt_config, on_cpu=False, candidate=False),),
)

__all__ = ["TensorRTEncoder", "TensorRTExportConfig", "build_engine", "require_tensorrt"]
