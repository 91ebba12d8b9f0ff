"""INT8 calibration on the ONNX graph (no torch): range collection and the INT8 artefact writers."""
