"""A cuda-python runtime module built from a recorded release (tests/fixtures/api/cuda-python-<version>.json).

Functions exist with the release's parameters (a wrong name or argument count fails), enums with the
release's members, and each call answers like cuda-python does: an ``(error, value...)`` tuple with
error 0. Device memory is host memory (``cudaMallocHost`` returns a real address, which the CUDA
module wraps with ctypes). Violations are raised and recorded in ``_violations``.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import types
from pathlib import Path
from typing import Any, Dict, List

from .proxy import ApiViolation

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "api"
# What the calls hand back besides the error code (cuda-python's documented return tuples).
RESULTS = {"cudaDriverGetVersion": (12060,), "cudaGetDeviceCount": (1,), "cudaMalloc": (4096,),
           "cudaStreamCreate": ("stream",), "cudaEventCreate": ("event",), "cudaEventElapsedTime": (0.5,),
           "cudaStreamEndCapture": ("graph",), "cudaGraphInstantiateWithFlags": ("graph-exec",),
           "cudaGetErrorName": (b"cudaSuccess",)}


def cuda_versions() -> List[str]:
    return sorted((p.stem.split("-", 2)[2] for p in FIXTURES.glob("cuda-python-*.json")),
                  key=lambda v: tuple(int(x) for x in v.replace(".post", ".").split(".")))


class _Enum:
    def __init__(self, name: str, members: List[str]) -> None:
        self.__name__ = name
        for index, member in enumerate(members):
            setattr(self, member, index)


class CudaRuntime(types.ModuleType):
    def __init__(self, surface: Dict[str, Any]) -> None:
        super().__init__(surface["module"])
        self._surface = surface
        self._violations: List[str] = []
        self._host: List[Any] = []
        for name, members in surface["enums"].items():
            setattr(self, name, _Enum(name, members))
        for name, spec in surface["functions"].items():
            setattr(self, name, self._function(name, spec["params"]))

    def _fail(self, message: str) -> None:
        self._violations.append(message)
        raise ApiViolation("cuda-python {}: {}".format(self._surface["wheel_version"], message))

    def _function(self, name: str, params: Any) -> Any:
        module = self
        signature = None if params is None else inspect.Signature([
            inspect.Parameter(p["name"], inspect.Parameter.VAR_POSITIONAL if p["star"] == "*" else
                              inspect.Parameter.VAR_KEYWORD if p["star"] == "**" else
                              inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              **({"default": None} if p["default"] else {})) for p in params])

        def call(*args: Any, **kwargs: Any) -> Any:
            if signature is not None:
                try:
                    signature.bind(*args, **kwargs)
                except TypeError as exc:
                    module._fail("{}: {}".format(name, exc))
            return (0,) + module._result(name, args)

        call.__name__ = name
        return call

    def _result(self, name: str, args: Any) -> tuple:
        if name == "cudaMallocHost":
            buffer = ctypes.create_string_buffer(int(args[0]))
            self._host.append(buffer)
            return (ctypes.addressof(buffer),)
        if name == "cudaGetDeviceProperties":
            return (self._props(),)
        return RESULTS.get(name, ())

    def _props(self) -> Any:
        wanted = {"name": b"Orin (proxy)", "major": 8, "minor": 7}
        known = set(self._surface["classes"].get("cudaDeviceProp", []))
        if known and not set(wanted) <= known:
            self._fail("cudaDeviceProp lacks {}".format(sorted(set(wanted) - known)))
        return types.SimpleNamespace(**wanted)


def cuda_runtime(version: str) -> CudaRuntime:
    return CudaRuntime(json.loads((FIXTURES / "cuda-python-{}.json".format(version)).read_text()))
