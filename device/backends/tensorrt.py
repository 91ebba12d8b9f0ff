"""TensorRT backend. Not yet implemented: it reports itself unavailable rather than pretend.

The job then fails with a clear message, or falls back to ONNX Runtime where deploy.toml allows it.
"""

from __future__ import annotations

from .base import Backend, BackendUnavailable


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self) -> None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise BackendUnavailable("TensorRT Python bindings are not installed") from None
        raise BackendUnavailable("this edgekit version does not build TensorRT engines yet")
