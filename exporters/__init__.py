"""encoder_shrink.exporters: ONNX (fp32, fp16, int8) and TensorRT exports of students, and their runtime encoders.

Importing this package does not import onnx, onnxruntime or tensorrt; the functions do when called.
"""

from encoder_shrink.exporters.onnx_export import export_onnx, load_report
from encoder_shrink.exporters.parity import ExportParityError
from encoder_shrink.exporters.runtime import OnnxShrunkT5Encoder, load_encoder
from encoder_shrink.exporters.tensorrt import TensorRTShrunkT5Encoder, build_engine

__all__ = [
    "ExportParityError",
    "OnnxShrunkT5Encoder",
    "TensorRTShrunkT5Encoder",
    "build_engine",
    "export_onnx",
    "load_encoder",
    "load_report",
]
