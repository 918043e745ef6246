"""encoder_shrink.exporters: registered export formats (ONNX fp32/fp16/int8, TensorRT, torch bf16, OpenVINO, the
fastest CPU backend measured here, the reference's one-file layout), their named backends, `export`, and the runtime
encoders `load_encoder` returns for exported folders.

Importing this package imports no torch, transformers, onnx, onnxruntime, openvino or tensorrt; the formats do when
they run. The formats register in the order below (the order `--help`, `bench` and `best-cpu` list them in).
"""

from encoder_shrink.exporters.formats import (
    BACKENDS,
    EXPORT_FORMATS,
    Backend,
    BackendOptions,
    ExportFormat,
    backend_format,
    cpu_candidates,
    export,
    format_of,
    get_backend,
    get_format,
    load_encoder,
    read_config,
    register_export_format,
    registered_backends,
    registered_formats,
)
from encoder_shrink.exporters.parity import ExportParityError

# isort: split
from encoder_shrink.exporters.onnx_export import OnnxEncoder, OnnxExportConfig, export_onnx, load_report

# isort: split
from encoder_shrink.exporters.tensorrt import TensorRTEncoder, TensorRTExportConfig, build_engine

# isort: split
from encoder_shrink.exporters.torch_bf16 import TorchBF16Encoder, TorchBF16ExportConfig

# isort: split
from encoder_shrink.exporters.openvino import OpenVINOEncoder, OpenVINOExportConfig

# isort: split
from encoder_shrink.exporters.distillt5 import DistillT5ExportConfig

# isort: split
from encoder_shrink.exporters.best_cpu import BestCPUExportConfig

__all__ = [
    "BACKENDS",
    "EXPORT_FORMATS",
    "Backend",
    "BackendOptions",
    "BestCPUExportConfig",
    "DistillT5ExportConfig",
    "ExportFormat",
    "ExportParityError",
    "OnnxEncoder",
    "OnnxExportConfig",
    "OpenVINOEncoder",
    "OpenVINOExportConfig",
    "TensorRTEncoder",
    "TensorRTExportConfig",
    "TorchBF16Encoder",
    "TorchBF16ExportConfig",
    "backend_format",
    "build_engine",
    "cpu_candidates",
    "encoder_class",
    "export",
    "export_onnx",
    "format_of",
    "get_backend",
    "get_format",
    "load_encoder",
    "load_report",
    "read_config",
    "register_export_format",
    "registered_backends",
    "registered_formats",
]


def encoder_class(runtime: type, kind) -> type:
    """The runtime encoder class of a format's `runtime` for students of `kind` (see `exporters.runtime`)."""
    from encoder_shrink.exporters.runtime import encoder_class as make

    return make(runtime, kind)
