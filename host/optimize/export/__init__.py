"""ONNX export, its check against torch, and the host's ONNX Runtime helpers."""
