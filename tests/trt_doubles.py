"""Test doubles for TensorRT and CUDA, for the logic around them (TensorRT cannot be installed here).

They implement only names NVIDIA's real bindings have (tests/test_api_conformance.py checks every
attribute used here against the recorded 10.x fixtures), run a tiny "network" on numpy buffers so data
really flows through our copies, padding and shapes, and record the calls whose order matters.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np


class Clock:
    """A fake GPU/host clock: every event record advances it by one step."""

    def __init__(self, step_ms: float = 1.0) -> None:
        self.now = 0.0
        self.step = step_ms

    def tick(self) -> float:
        self.now += self.step
        return self.now


class FakeCuda:
    """Host-memory CUDA: device pointers index numpy buffers; events take times from a Clock."""

    name = "fake-cuda"

    def __init__(self, capture_error: str = "") -> None:
        self.buffers: dict[int, np.ndarray] = {}
        self.clock = Clock()
        self.calls: list[Any] = []
        self.capture_error = capture_error
        self.destroyed_graphs = 0
        self.closed = False

    def version(self) -> str:
        return "0"

    def driver_version(self) -> int:
        return 12060

    def device(self):
        return "Fake Orin", (8, 7)

    def malloc(self, nbytes: int) -> int:
        pointer = len(self.buffers) + 1
        self.buffers[pointer] = np.zeros(nbytes, dtype=np.uint8)
        return pointer

    def host_array(self, shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def stream(self) -> str:
        return "stream{}".format(len([c for c in self.calls if c[0] == "stream"]))

    def stream_handle(self, stream) -> int:
        return hash(stream)

    def htod(self, pointer: int, host: np.ndarray, stream) -> None:
        self.buffers[pointer][:host.nbytes] = np.frombuffer(np.ascontiguousarray(host).tobytes(), np.uint8)
        self.calls.append(("htod", stream))

    def dtoh(self, host: np.ndarray, pointer: int, stream) -> None:
        host.reshape(-1).view(np.uint8)[:] = self.buffers[pointer][:host.nbytes]
        self.calls.append(("dtoh", stream))

    def sync(self, stream) -> None:
        pass

    def event(self) -> dict:
        return {"t": None}

    def record(self, event: dict, stream) -> None:
        event["t"] = self.clock.tick()
        self.calls.append(("record", stream))

    def wait_event(self, stream, event) -> None:
        self.calls.append(("wait", stream))

    def event_sync(self, event) -> None:
        pass

    def elapsed_ms(self, start: dict, end: dict) -> float:
        return end["t"] - start["t"]

    def capture_graph(self, stream, work):
        if self.capture_error:
            return None, "CUDA graph capture failed ({}); timed without a graph".format(self.capture_error)
        work()
        return ("graph", "exec"), ""

    def launch_graph(self, graph, stream) -> None:
        self.calls.append(("graph", stream))

    def destroy_graph(self, graph) -> None:
        self.destroyed_graphs += 1

    def close(self) -> None:
        self.closed = True

    def child(self) -> "FakeCuda":
        """Like Cuda.child: the same device memory and clock, its own ``closed`` flag."""
        view = FakeCuda.__new__(FakeCuda)
        view.__dict__.update(self.__dict__, closed=False)
        self.children = getattr(self, "children", []) + [view]
        return view


def fake_trt(io_dtype: Any = np.float32, classes: int = 10) -> types.SimpleNamespace:
    """A ``tensorrt`` stand-in whose engine maps input (N, C, H, W) to logits (N, classes)."""
    order: list[str] = []

    class IProfiler:
        def __init__(self) -> None:
            pass

    class Context:
        def __init__(self, engine) -> None:
            self.engine, self.shape, self.addresses, self.profiler, self.enqueued = engine, None, {}, None, []

        def set_input_shape(self, name, shape) -> bool:
            if not self.engine.low <= shape[0] <= self.engine.high:
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape if name == "input" else (self.shape[0], classes)

        def set_tensor_address(self, name, pointer) -> None:
            self.addresses[name] = pointer

        def execute_async_v3(self, stream_handle) -> bool:
            cuda = self.engine.cuda
            n = self.shape[0]
            size = int(np.prod(self.shape)) * np.dtype(io_dtype).itemsize
            x = cuda.buffers[self.addresses["input"]][:size].view(io_dtype).reshape(self.shape)
            logits = (x.reshape(n, -1).astype(np.float32).mean(1, keepdims=True) * np.arange(classes)).astype(io_dtype)
            cuda.buffers[self.addresses["output"]][:logits.nbytes] = logits.reshape(-1).view(np.uint8)
            self.enqueued.append(n)
            if self.profiler is not None:
                self.profiler.report_layer_time("conv1", 0.5)
            return True

        def __del__(self) -> None:
            order.append("context")

    class Engine:
        num_io_tensors = 2

        def __init__(self, cuda, low, high, chw) -> None:
            self.cuda, self.low, self.high, self.chw = cuda, low, high, chw

        def create_execution_context(self):
            return Context(self)

        def get_tensor_name(self, index):
            return ("input", "output")[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1,) + self.chw if name == "input" else (-1, classes)

        def get_tensor_dtype(self, name):
            return io_dtype

        def __del__(self) -> None:
            order.append("engine")

    class Runtime:
        def __del__(self) -> None:
            order.append("runtime")

    trt = types.SimpleNamespace(
        __version__="10.3.0.30", IProfiler=IProfiler, Engine=Engine, Runtime=Runtime, teardown=order,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"), nptype=lambda dtype: dtype)
    return trt
