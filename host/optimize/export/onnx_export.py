"""ONNX export with a dynamic batch, checked by onnx and compared against torch in ONNX Runtime."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ...errors import CheckFailed, ConfigError
from ...outputs import ExportOrder, OutputKey, export_names, select
from .pools import exportable_pools

# torch < 2.5 has only the TorchScript exporter and no ``dynamo`` argument (pyproject allows torch ≥ 2.1)
TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export_onnx(model: nn.Module, path: Path, shape: list[int], *, opset: int = 17, input_name: str = "input",
                output: OutputKey = 0) -> list[str]:
    """TorchScript-based exporter (``dynamo=False``): opset 17 graphs without the dynamo down-conversion.

    torch 2.13's dynamo exporter emits opset 18 and fails converting ReduceMean down to 17, which
    TensorRT 8.5 (JetPack 5) needs; the TorchScript exporter writes opset 17 directly. BatchNorm is
    exported as it is (``TrainingMode.PRESERVE`` on an eval-mode model): the exporter's own eval
    peephole would fold Conv+BN silently and ignore ``fold_bn = false``; folding is ``fold.py``'s job.
    Every output is exported, the classifier's (``output``) first as ``logits``; returns the names. Adaptive
    pools the exporter refuses (VGG's 7×7 from a 1×1 map at 32×32) are exported as matrix products (``pools.py``).
    """
    sample = torch.zeros(1, *shape)
    model = model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), exportable_pools(model, sample):
            warnings.simplefilter("ignore")
            names = export_names(model, sample, output)
            ordered = ExportOrder(model, output).eval()
            torch.onnx.export(ordered, (sample,), str(path), input_names=[input_name], output_names=names,
                              opset_version=opset, training=torch.onnx.TrainingMode.PRESERVE, **TORCHSCRIPT,
                              dynamic_axes={name: {0: "batch"} for name in [input_name, *names]})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ConfigError(f"input.shape {shape}: the model cannot take this input ({first}); "
                          "fix input.shape in deploy.toml") from None
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds on unsupported code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"ONNX export failed ({type(exc).__name__}: {first}); make the forward pass exportable "
                          "(tensors in, tensors out, no data-dependent Python control flow) or report it") from None
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True), str(path))
    return names


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


DIVERGED = 1e6  # logits beyond this come from a diverged training: no classifier needs them


def verify_onnx(model: nn.Module, path: Path, inputs: np.ndarray, rtol: float = 1e-3, atol: float = 1e-4,
                output: OutputKey = 0) -> float:
    """ONNX Runtime's classifier output must reproduce torch's on real inputs; returns the max abs difference."""
    with torch.no_grad():
        expected = select(model.eval()(torch.from_numpy(inputs)), output).numpy()
    actual = onnx_predict(path, inputs)
    difference = float(np.max(np.abs(expected - actual)))
    if not np.allclose(expected, actual, rtol=rtol, atol=atol):
        largest = float(np.max(np.abs(expected)))
        if not np.isfinite(largest) or largest > DIVERGED:  # float32 rounding alone, not the export
            raise CheckFailed(f"{path.name}: the model's logits reach {largest:.3g}, so float32 cannot reproduce "
                              f"them (ONNX Runtime differs from torch by up to {difference:.3g}): its training "
                              "diverged; lower train.lr (e.g. 0.01) and retrain it")
        raise CheckFailed(f"{path.name}: ONNX Runtime differs from torch by up to {difference:.3g}; "
                          "the export is wrong, please report it with the model")
    return difference
