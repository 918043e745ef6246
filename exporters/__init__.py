"""encoder_shrink.exporters: registered export formats (ONNX fp32/fp16/int8, TensorRT, torch bf16, OpenVINO, the
fastest CPU backend measured here, the reference's one-file layout), `export`, and the runtime encoders `load_encoder`
returns for exported folders.

Importing this package does not import onnx, onnxruntime, openvino or tensorrt; the formats do when they run.
"""

from encoder_shrink.exporters.best_cpu import BestCPUExportConfig, cpu_candidates
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
from encoder_shrink.exporters.openvino import (
    OpenVINOExportConfig,
    OpenVINOShrunkLLMEncoder,
    OpenVINOShrunkT5Encoder,
    OpenVINOShrunkUMT5Encoder,
)
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
from encoder_shrink.exporters.torch_bf16 import (
    TorchBF16ExportConfig,
    TorchBF16ShrunkLLMEncoder,
    TorchBF16ShrunkT5Encoder,
    TorchBF16ShrunkUMT5Encoder,
)

__all__ = [
    "EXPORT_FORMATS",
    "BestCPUExportConfig",
    "DistillT5ExportConfig",
    "ExportFormat",
    "ExportParityError",
    "ExportedEncoder",
    "OnnxExportConfig",
    "OnnxShrunkLLMEncoder",
    "OnnxShrunkT5Encoder",
    "OnnxShrunkUMT5Encoder",
    "OpenVINOExportConfig",
    "OpenVINOShrunkLLMEncoder",
    "OpenVINOShrunkT5Encoder",
    "OpenVINOShrunkUMT5Encoder",
    "TensorRTExportConfig",
    "TensorRTShrunkLLMEncoder",
    "TensorRTShrunkT5Encoder",
    "TensorRTShrunkUMT5Encoder",
    "TorchBF16ExportConfig",
    "TorchBF16ShrunkLLMEncoder",
    "TorchBF16ShrunkT5Encoder",
    "TorchBF16ShrunkUMT5Encoder",
    "build_engine",
    "cpu_candidates",
    "export",
    "export_onnx",
    "format_of",
    "get_format",
    "load_encoder",
    "load_report",
    "register_export_format",
    "registered_formats",
]
