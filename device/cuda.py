"""CUDA memory, streams and events for the TensorRT runner, behind one small interface.

cuda-python (``cuda.bindings.runtime`` in new releases, ``cuda.cudart`` in older ones) is preferred;
pycuda is the fallback JetPack users often already have. Only what the runner needs is wrapped.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable, List, Optional, Tuple

import numpy as np


class CudaUnavailable(RuntimeError):
    """Neither cuda-python nor pycuda can be used on this device."""


class Cuda:
    name = "base"

    def device(self) -> Tuple[str, Tuple[int, int]]:
        raise NotImplementedError

    def runtime_version(self) -> Optional[int]:
        return None

    def malloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def host_array(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        """Page-locked host memory (fast, asynchronous copies)."""
        raise NotImplementedError

    def stream(self) -> Any:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        raise NotImplementedError

    def htod(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def dtoh(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        raise NotImplementedError

    def sync(self, stream: Any) -> None:
        raise NotImplementedError

    def event(self) -> Any:
        raise NotImplementedError

    def record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def capture_graph(self, stream: Any, work: Callable[[], None]) -> Any:
        """A CUDA graph of ``work`` on ``stream``, or None where this binding cannot capture."""
        return None

    def launch_graph(self, graph: Any, stream: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free everything allocated through this object."""


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on error, return the value(s)."""
    error, values = result[0], result[1:]
    if int(error) != 0:
        raise RuntimeError("CUDA error {}".format(error))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class CudaPython(Cuda):
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.rt = cudart
        self.device_allocations: List[int] = []
        self.host_allocations: List[int] = []

    def device(self) -> Tuple[str, Tuple[int, int]]:
        props = _check(self.rt.cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), (int(props.major), int(props.minor))

    def runtime_version(self) -> Optional[int]:
        return int(_check(self.rt.cudaRuntimeGetVersion()))

    def malloc(self, nbytes: int) -> int:
        ptr = int(_check(self.rt.cudaMalloc(nbytes)))
        self.device_allocations.append(ptr)
        return ptr

    def host_array(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(_check(self.rt.cudaMallocHost(nbytes)))
        self.host_allocations.append(ptr)
        buffer = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    def stream(self) -> Any:
        return _check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def htod(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        _check(self.rt.cudaMemcpyAsync(device_ptr, host.ctypes.data, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        _check(self.rt.cudaMemcpyAsync(host.ctypes.data, device_ptr, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def sync(self, stream: Any) -> None:
        _check(self.rt.cudaStreamSynchronize(stream))

    def event(self) -> Any:
        return _check(self.rt.cudaEventCreate())

    def record(self, event: Any, stream: Any) -> None:
        _check(self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        _check(self.rt.cudaEventSynchronize(end))
        return float(_check(self.rt.cudaEventElapsedTime(start, end)))

    def capture_graph(self, stream: Any, work: Callable[[], None]) -> Any:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _check(self.rt.cudaStreamBeginCapture(stream, mode))
        work()
        graph = _check(self.rt.cudaStreamEndCapture(stream))
        try:
            return _check(self.rt.cudaGraphInstantiate(graph, 0))
        except TypeError:  # CUDA 11 signature
            return _check(self.rt.cudaGraphInstantiate(graph, None, None, 0))[0]

    def launch_graph(self, graph: Any, stream: Any) -> None:
        _check(self.rt.cudaGraphLaunch(graph, stream))

    def close(self) -> None:
        for ptr in self.device_allocations:
            self.rt.cudaFree(ptr)
        for ptr in self.host_allocations:
            self.rt.cudaFreeHost(ptr)
        self.device_allocations, self.host_allocations = [], []


class PyCuda(Cuda):
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as driver

        driver.init()
        self.driver = driver
        self.context = driver.Device(0).make_context()
        self.keep: List[Any] = []

    def device(self) -> Tuple[str, Tuple[int, int]]:
        device = self.driver.Device(0)
        return device.name(), tuple(device.compute_capability())  # type: ignore[return-value]

    def runtime_version(self) -> Optional[int]:
        major, minor, _ = self.driver.get_version()
        return major * 1000 + minor * 10

    def malloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(nbytes)
        self.keep.append(allocation)
        return int(allocation)

    def host_array(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.driver.pagelocked_empty(shape, dtype)

    def stream(self) -> Any:
        return self.driver.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        self.driver.memcpy_htod_async(device_ptr, host, stream)

    def dtoh(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        self.driver.memcpy_dtoh_async(host, device_ptr, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.driver.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def close(self) -> None:
        for allocation in self.keep:
            allocation.free()
        self.keep = []
        self.context.pop()


def load_cuda() -> Cuda:
    """cuda-python, else pycuda; CudaUnavailable names both when neither works."""
    reasons = []
    for factory in (CudaPython, PyCuda):
        try:
            return factory()
        except Exception as exc:  # noqa: BLE001 - import and driver errors both mean "not usable"
            reasons.append("{}: {}".format(factory.name, exc))
    raise CudaUnavailable("no CUDA Python binding works ({}); install cuda-python".format("; ".join(reasons)))
