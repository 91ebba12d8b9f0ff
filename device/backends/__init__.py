"""Inference backends behind one interface; which exist is decided by what imports on the device.

This registry is the one list of backend names: the agent's status, ``auto``'s candidates and the
host's choice of files all ask it.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from .base import Backend, BackendUnavailable, Engine

__all__ = ["Backend", "BackendUnavailable", "Engine", "NAMES", "get_backend", "available", "describe_all"]

NAMES = ("onnxruntime", "openvino", "tensorrt")


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; raises BackendUnavailable when its runtime is missing."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend()
    if name == "tensorrt":
        from .tensorrt.backend import TensorRTBackend

        return TensorRTBackend()
    raise BackendUnavailable("unknown backend {!r}".format(name))


def available(names: Sequence[str] = NAMES) -> Dict[str, Backend]:
    """The backends that load here, by name (a missing runtime is simply absent)."""
    found = {}
    for name in names:
        try:
            found[name] = get_backend(name)
        except BackendUnavailable:
            continue
    return found


def describe_all(names: List[str] = NAMES) -> Dict[str, Dict[str, object]]:
    """What each backend reports about itself, or why it is not available."""
    result = {}
    for name in names:
        try:
            result[name] = dict(get_backend(name).describe(), available=True)
        except BackendUnavailable as exc:
            result[name] = {"available": False, "reason": str(exc)}
    return result
