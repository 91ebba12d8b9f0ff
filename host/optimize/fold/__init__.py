"""BatchNorm folding: in torch before export, and on the ONNX graph after it."""
