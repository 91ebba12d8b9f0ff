"""Inference backends behind one interface; which exist is decided by what imports on the device.

The names are the contract's (``contract.runtimes``, which the host reads too); this registry turns a name
into the backend that runs it here, for the agent's status, ``auto``'s candidates and the jobs.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from ..contract.runtimes import names
from .base import Backend, BackendUnavailable, Engine

__all__ = ["Backend", "BackendUnavailable", "Engine", "NAMES", "get_backend", "available", "describe_all"]

NAMES = names()


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
