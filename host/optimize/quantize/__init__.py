"""INT8 and FP16 model files: PTQ from the calibration ranges (maths in ``edgekit.calibration``), QAT when PTQ
misses the budget, FP16 typing for TensorRT 11."""
