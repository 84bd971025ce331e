"""ort3d.export: per-network specs, ONNX export, TensorRT engines, manifest and cache."""
