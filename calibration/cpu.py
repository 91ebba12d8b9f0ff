"""Write ``model.int8.cpu.onnx`` with ONNX Runtime's own quantiser, fed with our calibration ranges.

uint8 activations and int8 per-channel weights (U8S8) is ONNX Runtime's fast path on x86 (VNNI) and
ARM; symmetric int8 activations run slower than FP32 there. Activation ranges are asymmetric: the
observed [min, max] clipped to ±amax, so a post-ReLU tensor uses all 256 levels of [0, amax].
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from pathlib import Path

import numpy as np

from .table import CalibrationTable
from .trt_qdq import WEIGHTED


@contextlib.contextmanager
def _quiet_root_logger():
    """quantize_static logs 'consider pre-processing' on the root logger; our graph is already folded
    and shape-inferred, so the advice is noise in the user's terminal."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def constants_as_initializers(model_path: Path, scratch: Path) -> Path:
    """``model_path``, or a copy at ``scratch`` whose ``Constant`` nodes are initializers.

    The exporter writes some constants as nodes (a GELU's 1/sqrt(2), a LayerNorm's epsilon); ONNX
    Runtime's quantiser then treats them as activations and stops with "Quantization parameters are not
    specified" for a tensor no calibration observes. As initializers they are weights, which it quantises
    (or leaves float) itself.
    """
    import onnx

    model = onnx.load(str(model_path))
    constants = [node for node in model.graph.node if node.op_type == "Constant" and len(node.attribute) == 1
                 and node.attribute[0].name == "value"]
    if not constants:
        return model_path
    for node in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)
    onnx.save(model, str(scratch))
    return scratch


def ort_ranges(table: CalibrationTable):
    """Our table as ONNX Runtime's TensorsData (clipped asymmetric ranges)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    data = {}
    for name, r in table.ranges.items():
        low, high = max(r.lowest, -r.amax), min(r.highest, r.amax)
        data[name] = TensorData(lowest=np.float32(min(low, 0.0)), highest=np.float32(max(high, 0.0)))
    return TensorsData(CalibrationMethod.MinMax, data)


def write_cpu_int8(model_path: Path, table: CalibrationTable, output: Path,
                   exclude: set[str] | frozenset[str] = frozenset(), weighted_only: bool = False,
                   reduce_range: bool = False) -> None:
    """``weighted_only`` quantises just Conv/Gemm/MatMul: in mixed precision the Adds and activations
    around a floating-point layer must stay float too, or excluding the layer recovers nothing.
    ``reduce_range`` writes 7-bit weights, for x86 CPUs without VNNI whose U8S8 kernels saturate."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise RuntimeError("onnxruntime is too old to accept precomputed ranges; pip install -U onnxruntime")
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-") as tmp, _quiet_root_logger():
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(ort_ranges(table), ranges)
        model_path = constants_as_initializers(model_path, Path(tmp) / "model.onnx")
        quantize_static(str(model_path), str(output), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(ranges),
                        nodes_to_exclude=sorted(exclude), extra_options={"WeightSymmetric": True},
                        reduce_range=reduce_range,
                        op_types_to_quantize=list(WEIGHTED) if weighted_only else None)
