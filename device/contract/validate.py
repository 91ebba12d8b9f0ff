"""Does the device's engine give the host's answers? Compared on ``reference.npz``.

One rule, used twice: the host runs it on its own copy before upload (each INT8/FP16 file against
the FP32 model, per-precision tolerances) and refuses what would fail; the device runs it on its
engine against the host's outputs *of the same file* (``reference_key``): tight when the device runs
that file in the same runtime as the host did (ONNX Runtime), per-precision tolerances when another
runtime builds from it (TensorRT). deploy.toml can tighten or loosen each value.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

DEFAULT_TOLERANCES = {
    "fp32": {"min_top1_agreement": 0.99, "min_cosine": 0.9999},
    "fp16": {"min_top1_agreement": 0.98, "min_cosine": 0.999},
    "int8": {"min_top1_agreement": 0.95, "min_cosine": 0.99},
}


# The same file in the same runtime differs only by kernels (CPU ISA, thread count): near-exact.
SAME_RUNTIME_TOLERANCES = {
    "fp32": {"min_top1_agreement": 0.99, "min_cosine": 0.9999},
    "fp16": {"min_top1_agreement": 0.99, "min_cosine": 0.9995},
    "int8": {"min_top1_agreement": 0.98, "min_cosine": 0.999},
}
FP32_REFERENCE = "outputs"


def reference_key(model_file: str) -> str:
    """The array of ``reference.npz`` holding the host's outputs of ``model_file``."""
    return "outputs." + model_file


def tolerances(precision: str, overrides: Mapping[str, Any], same_runtime: bool = False) -> Dict[str, float]:
    merged = dict((SAME_RUNTIME_TOLERANCES if same_runtime else DEFAULT_TOLERANCES)[precision])
    merged.update({k: float(v) for k, v in overrides.items() if k in merged})
    return merged


def compare(reference: np.ndarray, actual: np.ndarray, labels: np.ndarray, precision: str,
            overrides: Mapping[str, Any], same_runtime: bool = False) -> Dict[str, Any]:
    """Top-1 agreement, cosine similarity (worst sample), absolute errors, and the verdict."""
    if reference.shape != actual.shape:
        return {"passed": False, "reason": "output shape {} differs from the host's {}".format(
            list(actual.shape), list(reference.shape))}
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = actual.reshape(len(actual), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = np.sum(ref * out, axis=1) / np.maximum(norms, 1e-30)
    limits = tolerances(precision, overrides, same_runtime)
    agreement = float(np.mean(ref.argmax(1) == out.argmax(1)))
    result = {
        "samples": int(len(ref)),
        "top1_agreement": agreement,
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "max_abs_error": float(np.max(np.abs(ref - out))),
        "mean_abs_error": float(np.mean(np.abs(ref - out))),
        "device_top1": float(np.mean(out.argmax(1) == labels)) if labels.size else None,
        "tolerances": limits,
        "same_runtime": same_runtime,
    }
    failures = []
    if agreement < limits["min_top1_agreement"]:
        failures.append("top-1 agreement {:.4f} < {}".format(agreement, limits["min_top1_agreement"]))
    if result["cosine_min"] < limits["min_cosine"]:
        failures.append("cosine {:.6f} < {}".format(result["cosine_min"], limits["min_cosine"]))
    result["passed"] = not failures
    result["reason"] = "; ".join(failures)
    return result
