"""encoder_shrink.exporters: ONNX / int8 / TensorRT export of students and their runtime encoders."""
