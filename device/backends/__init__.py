"""Inference backends behind one interface; which exist is decided by what imports on the device."""

from __future__ import annotations

from typing import Dict, List

from .base import Backend, BackendUnavailable, Engine

__all__ = ["Backend", "BackendUnavailable", "Engine", "get_backend", "describe_all"]


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; raises BackendUnavailable when its runtime is missing."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend()
    raise BackendUnavailable("unknown backend {!r}".format(name))


def describe_all(names: List[str] = ("onnxruntime", "tensorrt")) -> Dict[str, Dict[str, object]]:
    """What each backend reports about itself, or why it is not available."""
    result = {}
    for name in names:
        try:
            result[name] = dict(get_backend(name).describe(), available=True)
        except BackendUnavailable as exc:
            result[name] = {"available": False, "reason": str(exc)}
    return result
