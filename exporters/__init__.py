"""encoder_shrink.exporters: registered export formats (ONNX fp32/fp16/int8, TensorRT, the reference's one-file
layout), `export`, and the runtime encoders `load_encoder` returns for exported folders.

Importing this package does not import onnx, onnxruntime or tensorrt; the formats do when they run.
"""

from encoder_shrink.exporters.distillt5 import DistillT5ExportConfig
from encoder_shrink.exporters.formats import (
    EXPORT_FORMATS,
    ExportFormat,
    export,
    format_of,
    get_format,
    load_encoder,
    register_export_format,
    registered_formats,
)
from encoder_shrink.exporters.onnx_export import OnnxExportConfig, export_onnx, load_report
from encoder_shrink.exporters.parity import ExportParityError
from encoder_shrink.exporters.runtime import (
    ExportedEncoder,
    OnnxShrunkLLMEncoder,
    OnnxShrunkT5Encoder,
    OnnxShrunkUMT5Encoder,
)
from encoder_shrink.exporters.tensorrt import (
    TensorRTExportConfig,
    TensorRTShrunkLLMEncoder,
    TensorRTShrunkT5Encoder,
    TensorRTShrunkUMT5Encoder,
    build_engine,
)

__all__ = [
    "EXPORT_FORMATS",
    "DistillT5ExportConfig",
    "ExportFormat",
    "ExportParityError",
    "ExportedEncoder",
    "OnnxExportConfig",
    "OnnxShrunkLLMEncoder",
    "OnnxShrunkT5Encoder",
    "OnnxShrunkUMT5Encoder",
    "TensorRTExportConfig",
    "TensorRTShrunkLLMEncoder",
    "TensorRTShrunkT5Encoder",
    "TensorRTShrunkUMT5Encoder",
    "build_engine",
    "export",
    "export_onnx",
    "format_of",
    "get_format",
    "load_encoder",
    "load_report",
    "register_export_format",
    "registered_formats",
]
