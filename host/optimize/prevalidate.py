"""Reference outputs per shipped model file, and the device's validation rule run on the host first.

The host runs every model file it ships on the same reference images (ONNX Runtime) and stores each
file's outputs in ``reference.npz``; the device compares its engine with the outputs of the file it
built from. Whether an INT8 (or FP16) file is faithful enough to the FP32 model is decided here,
before upload, with the device's own ``compare`` (``edgekit.device.contract.validate``, not a copy of it): a
file that would fail is refused with the figures and what to do next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...device.contract.manifest import MODEL_FP32
from ...device.contract.validate import FP32_REFERENCE, compare, reference_key
from ..errors import CheckFailed

REFERENCE_RUNTIME = "onnxruntime"


def reference_outputs(files: Mapping[str, Path], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The classifier outputs of every ONNX model file on ``inputs``, run by the host's ONNX Runtime."""
    from .export.onnx_export import onnx_predict  # torch comes with it: not imported by a fully cached push

    return {name: onnx_predict(path, inputs) for name, path in files.items() if name.endswith(".onnx")}


def write_reference(path: Path, inputs: np.ndarray, labels: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
    """``outputs`` (the FP32 model's, as older agents read it) plus ``outputs.<file>`` for every file."""
    arrays = {"inputs": inputs, "labels": labels.astype(np.int64), FP32_REFERENCE: outputs[MODEL_FP32]}
    arrays.update({reference_key(name): values for name, values in outputs.items()})
    np.savez(path, **arrays)


def fidelity(reference: Path, model_file: str, precision: str, overrides: Mapping[str, Any]) -> dict[str, Any] | None:
    """The device's rule for ``model_file`` against the FP32 model, on the reference images; None when the
    file is the FP32 model itself (nothing to compare) or the bundle predates per-file references."""
    if model_file == MODEL_FP32:
        return None
    with np.load(str(reference), allow_pickle=False) as data:
        if reference_key(model_file) not in data.files:
            return None
        return compare(data[FP32_REFERENCE], data[reference_key(model_file)], data["labels"], precision, overrides)


def constant_outputs(outputs: np.ndarray) -> str | None:
    """Why the FP32 model's outputs carry no information (None when they do): the same values for every
    reference image, e.g. all zero after a training whose last ReLU died. No file built from it can then
    match it by direction (cosine 0), and advice about quantisation would send the user the wrong way."""
    flat = outputs.reshape(len(outputs), -1).astype(np.float64)
    if len(flat) < 2 or np.ptp(flat, axis=0).max() > 1e-6 * max(1.0, float(np.abs(flat).max())):
        return None
    what = "all zero" if not np.abs(flat).max() else "identical"
    return (f"the FP32 model's outputs are {what} for every one of the {len(flat)} reference images (its training "
            "collapsed)")


def advice(precision: str, model_file: str) -> str:
    if precision == "int8":
        return ("keep more layers in floating point (lower quantize.max_accuracy_drop, quantize.mixed_precision = "
                "true), calibrate with more images (quantize.images), or use precision = \"fp16\" (TensorRT) or "
                "\"fp32\"")
    return "use precision = \"fp32\""


def check_before_upload(reference: Path, model_file: str, precision: str, overrides: Mapping[str, Any],
                        device: str) -> dict[str, Any] | None:
    """Refuse to ship what the device's validation would reject; returns the verdict for the report."""
    verdict = fidelity(reference, model_file, precision, overrides)
    if verdict is not None and not verdict["passed"]:
        with np.load(str(reference), allow_pickle=False) as data:
            degenerate = constant_outputs(data[FP32_REFERENCE])
        if degenerate:
            raise CheckFailed(f"{model_file} would fail validation on {device} ({verdict['reason']}), but the cause "
                              f"is the model, not {precision}: {degenerate}; nothing was uploaded. Train it again "
                              "(lower train.lr, more train.epochs) and check its held-out top-1 before pushing")
        raise CheckFailed(f"{model_file} would fail validation on {device} (checked on the host with the device's "
                          f"rule against the FP32 model: {verdict['reason']}); nothing was uploaded. "
                          f"To pass: {advice(precision, model_file)}")
    return verdict


class Fidelity:
    """The device's rule for INT8 files against the FP32 model on the reference images: what quantisation
    must meet (beside the label budget) before a file is good enough to ship."""

    def __init__(self, fp32: Path, inputs: np.ndarray, labels: np.ndarray, overrides: Mapping[str, Any]) -> None:
        self.inputs, self.labels, self.overrides = inputs, labels, dict(overrides)
        self.reference = reference_outputs({fp32.name: fp32}, inputs)[fp32.name]

    def failures(self, files: Mapping[str, Path], precision: str = "int8") -> dict[str, str]:
        """{file: why it would fail} for the files the device would reject."""
        failed = {}
        for name, outputs in reference_outputs(files, self.inputs).items():
            verdict = compare(self.reference, outputs, self.labels, precision, self.overrides)
            if not verdict["passed"]:
                failed[name] = verdict["reason"]
        return failed
