"""ONNX export with a dynamic batch, checked by onnx and compared against torch in ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .errors import CheckFailed, ConfigError


def export_onnx(model: nn.Module, path: Path, shape: list[int], *, opset: int = 17, input_name: str = "input",
                output_name: str = "logits") -> None:
    """TorchScript-based exporter (``dynamo=False``): opset 17 graphs without the dynamo down-conversion.

    torch 2.13's dynamo exporter emits opset 18 and fails converting ReduceMean down to 17, which
    TensorRT 8.5 (JetPack 5) needs; the TorchScript exporter writes opset 17 directly.
    """
    sample = torch.zeros(1, *shape)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(sample)
            torch.onnx.export(model.eval(), (sample,), str(path), input_names=[input_name],
                              output_names=[output_name], opset_version=opset, dynamo=False,
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ConfigError(f"input.shape {shape}: the model cannot take this input ({first}); "
                          "fix input.shape in deploy.toml") from None
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True), str(path))


def onnx_session(path: Path, threads: int = 0):
    """The host's ONNX Runtime session: every graph optimisation, as the device's ORT backend runs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_predict(path: Path, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i:i + batch_size]})[0]
                           for i in range(0, len(inputs), batch_size)])


def top1_of(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def onnx_top1(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Held-out top-1 of an ONNX model run by ONNX Runtime."""
    return top1_of(onnx_predict(path, inputs), labels)


def verify_onnx(model: nn.Module, path: Path, inputs: np.ndarray, rtol: float = 1e-3, atol: float = 1e-4) -> float:
    """ONNX Runtime must reproduce torch on real inputs; returns the max abs difference."""
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(inputs)).numpy()
    actual = onnx_predict(path, inputs)
    difference = float(np.max(np.abs(expected - actual)))
    if not np.allclose(expected, actual, rtol=rtol, atol=atol):
        raise CheckFailed(f"{path.name}: ONNX Runtime differs from torch by up to {difference:.3g}; "
                          "the export is wrong, please report it with the model")
    return difference
