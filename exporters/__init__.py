"""encoder_shrink.exporters: ONNX (fp32, int8) export of students with parity checks, and their runtime encoders.

Importing this package does not import onnx or onnxruntime; the functions do when called.
"""

from encoder_shrink.exporters.onnx_export import export_onnx, load_report
from encoder_shrink.exporters.parity import ExportParityError
from encoder_shrink.exporters.runtime import OnnxShrunkT5Encoder, load_encoder

__all__ = ["ExportParityError", "OnnxShrunkT5Encoder", "export_onnx", "load_encoder", "load_report"]
