"""CUDA memory, streams, events and graphs for the TensorRT runner, behind one small interface.

cuda-python (``cuda.bindings.runtime`` in new releases, ``cuda.cudart`` in older ones) is preferred;
pycuda is the fallback JetPack users often already have. A binding counts as usable only after a real
call reached the driver: an unpinned ``pip install cuda-python`` imports fine on a Jetson whose driver is
older than its CUDA major and fails on the first call (``cudaErrorInsufficientDriver``), so importing
proves nothing. Every failure becomes ``CudaUnavailable("CUDA unavailable: ...")`` naming each binding
tried, which the backend turns into a clean failed job or the configured fallback.
"""

from __future__ import annotations

import atexit
import copy
import ctypes
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np


class CudaUnavailable(RuntimeError):
    """Neither cuda-python nor pycuda can reach a CUDA driver on this device."""


class CudaError(RuntimeError):
    """A CUDA call returned an error; the message names the call and the error."""


class Cuda:
    name = "base"

    def version(self) -> str:
        """The binding's own version (what `device check` shows)."""
        return "unknown"

    def probe(self) -> None:
        """Make one real call that needs the driver; raise when it fails."""
        raise NotImplementedError

    def device(self) -> Tuple[str, Tuple[int, int]]:
        raise NotImplementedError

    def driver_version(self) -> Optional[int]:
        """The installed driver's CUDA version (e.g. 12060): what engines depend on."""
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

    def wait_event(self, stream: Any, event: Any) -> None:
        """Make ``stream`` wait for ``event`` (trtexec's input → compute → output stream chain)."""
        raise NotImplementedError

    def event_sync(self, event: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def capture_graph(self, stream: Any, work: Callable[[], None]) -> Tuple[Any, str]:
        """(graph, "") for a CUDA graph of ``work`` on ``stream``, or (None, why not): never raises."""
        return None, "{} cannot capture CUDA graphs".format(self.name)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        raise NotImplementedError

    def destroy_graph(self, graph: Any) -> None:
        """Free a graph from ``capture_graph``."""

    def close(self) -> None:
        """Free everything allocated through this object."""

    def child(self) -> Cuda:
        """A view on the same driver connection with its own allocations: each engine takes one, so closing
        one engine (the baseline) frees only its own memory, streams and events, never another engine's nor
        the connection (the context) itself."""
        view = copy.copy(self)
        view.reset_owned()
        return view

    def reset_owned(self) -> None:
        """Start a view with no allocations of its own."""


def _error_name(rt: Any, error: Any) -> str:
    try:
        return rt.cudaGetErrorName(error)[1].decode()
    except Exception:  # noqa: BLE001 - the name is a nicety; the number is enough
        return "CUDA error {}".format(int(error))


class CudaPython(Cuda):
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self.device_allocations: List[int] = []
        self.host_allocations: List[int] = []
        self.streams: List[Any] = []
        self.events: List[Any] = []

    def _check(self, call: str, *args: Any) -> Any:
        """cuda-python returns (error, value...) tuples; raise CudaError naming the call, else the value(s)."""
        result = getattr(self.rt, call)(*args)
        error, values = result[0], result[1:]
        if int(error) != 0:
            raise CudaError("{} failed: {}".format(call, _error_name(self.rt, error)))
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def version(self) -> str:
        for module in ("cuda.bindings", "cuda"):
            try:
                return str(__import__(module, fromlist=["__version__"]).__version__)
            except (ImportError, AttributeError):
                continue
        return "unknown"

    def probe(self) -> None:
        if int(self._check("cudaDriverGetVersion")) == 0:
            raise CudaError("no CUDA driver found (cudaDriverGetVersion reports 0)")
        if not self._check("cudaGetDeviceCount"):
            raise CudaError("the CUDA driver reports no GPU")

    def device(self) -> Tuple[str, Tuple[int, int]]:
        props = self._check("cudaGetDeviceProperties", 0)
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), (int(props.major), int(props.minor))

    def driver_version(self) -> Optional[int]:
        return int(self._check("cudaDriverGetVersion"))

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._check("cudaMalloc", nbytes))
        self.device_allocations.append(ptr)
        return ptr

    def host_array(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._check("cudaMallocHost", nbytes))
        self.host_allocations.append(ptr)
        buffer = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    def stream(self) -> Any:
        stream = self._check("cudaStreamCreate")
        self.streams.append(stream)
        return stream

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def htod(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        self._check("cudaMemcpyAsync", device_ptr, host.ctypes.data, host.nbytes,
                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def dtoh(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        self._check("cudaMemcpyAsync", host.ctypes.data, device_ptr, host.nbytes,
                    self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def sync(self, stream: Any) -> None:
        self._check("cudaStreamSynchronize", stream)

    def event(self) -> Any:
        event = self._check("cudaEventCreate")
        self.events.append(event)
        return event

    def record(self, event: Any, stream: Any) -> None:
        self._check("cudaEventRecord", event, stream)

    def wait_event(self, stream: Any, event: Any) -> None:
        self._check("cudaStreamWaitEvent", stream, event, 0)

    def event_sync(self, event: Any) -> None:
        self._check("cudaEventSynchronize", event)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check("cudaEventElapsedTime", start, end))

    def capture_graph(self, stream: Any, work: Callable[[], None]) -> Tuple[Any, str]:
        """cudaGraphInstantiateWithFlags: one signature in CUDA 11, 12 and 13 (cudaGraphInstantiate has two)."""
        graph = None
        try:
            self._check("cudaStreamBeginCapture", stream,
                        self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            try:
                work()
            finally:
                graph = self._check("cudaStreamEndCapture", stream)
            return (graph, self._check("cudaGraphInstantiateWithFlags", graph, 0)), ""
        except Exception as exc:  # noqa: BLE001 - like trtexec: no graph, plain enqueue instead
            if graph is not None:
                self.rt.cudaGraphDestroy(graph)
            return None, "CUDA graph capture failed ({}); timed without a graph".format(exc)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._check("cudaGraphLaunch", graph[1], stream)

    def destroy_graph(self, graph: Any) -> None:
        self.rt.cudaGraphExecDestroy(graph[1])
        self.rt.cudaGraphDestroy(graph[0])

    def close(self) -> None:
        for event in self.events:
            self.rt.cudaEventDestroy(event)
        for stream in self.streams:
            self.rt.cudaStreamDestroy(stream)
        for ptr in self.device_allocations:
            self.rt.cudaFree(ptr)
        for ptr in self.host_allocations:
            self.rt.cudaFreeHost(ptr)
        self.reset_owned()

    def reset_owned(self) -> None:
        self.device_allocations, self.host_allocations, self.streams, self.events = [], [], [], []


class PyCuda(Cuda):
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda
        import pycuda.driver as driver

        self.module = pycuda
        self.driver = driver
        self.context = None  # type: Any
        self.owns_context = False
        self.keep: List[Any] = []

    def version(self) -> str:
        return str(getattr(self.module, "VERSION_TEXT", "unknown"))

    def probe(self) -> None:
        self.driver.init()
        if self.driver.Device.count() == 0:
            raise CudaError("no CUDA device found")
        # The device's primary context (the one the CUDA runtime, hence TensorRT, uses), released at exit:
        # pycuda aborts the process ("The program will be aborted now") when a context is still pushed then.
        self.context = self.driver.Device(0).retain_primary_context()
        self.context.push()
        self.owns_context = True
        atexit.register(self.release_context)

    def device(self) -> Tuple[str, Tuple[int, int]]:
        device = self.driver.Device(0)
        return device.name(), tuple(device.compute_capability())  # type: ignore[return-value]

    def driver_version(self) -> Optional[int]:
        return int(self.driver.get_driver_version())

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

    def wait_event(self, stream: Any, event: Any) -> None:
        stream.wait_for_event(event)

    def event_sync(self, event: Any) -> None:
        event.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(end.time_since(start))

    def capture_graph(self, stream: Any, work: Callable[[], None]) -> Tuple[Any, str]:
        """No pycuda release binds stream capture (cuStreamBeginCapture): timed without a graph, and said."""
        return None, ("pycuda {} cannot capture CUDA graphs; timed without a graph (install cuda-python for "
                      "cuda_graph)".format(self.version()))

    def close(self) -> None:
        for allocation in self.keep:
            allocation.free()
        self.keep = []
        self.release_context()

    def reset_owned(self) -> None:
        self.keep, self.owns_context = [], False

    def release_context(self) -> None:
        """Pop and release the primary context this binding pushed (once; views own none)."""
        if self.owns_context and self.context is not None:
            self.owns_context = False
            self.context.pop()
            self.context.detach()
            self.context = None


BINDINGS = (CudaPython, PyCuda)


def try_binding(factory: Callable[[], Cuda]) -> Tuple[Optional[Cuda], Dict[str, Any]]:
    """Import a binding and make one driver call: (binding or None, what `device check` shows)."""
    name = getattr(factory, "name", str(factory))
    try:
        binding = factory()
    except ImportError as exc:
        return None, {"binding": name, "usable": False, "reason": "not installed ({})".format(exc)}
    except Exception as exc:  # noqa: BLE001 - a broken install is "not usable", never a crash
        return None, {"binding": name, "usable": False, "reason": "{}: {}".format(type(exc).__name__, exc)}
    info = {"binding": name, "version": binding.version()}
    try:
        binding.probe()
    except Exception as exc:  # noqa: BLE001 - any driver error means this binding cannot run engines
        binding.close()
        info.update(usable=False, reason=str(exc))
        return None, info
    info.update(usable=True, driver=binding.driver_version())
    return binding, info


def cuda_bindings() -> List[Dict[str, Any]]:
    """Each binding's state (installed? version? reaches the driver?) for `edgekit device check`."""
    report = []
    for factory in BINDINGS:
        binding, info = try_binding(factory)
        if binding is not None:
            binding.close()
        report.append(info)
    return report


def unavailable_message(report: List[Dict[str, Any]]) -> str:
    """One line naming every binding tried and why it failed, and what to do."""
    parts = ["{}{}: {}".format(i["binding"], " " + i["version"] if i.get("version") else "", i["reason"])
             for i in report]
    return ("CUDA unavailable: {}; install the cuda-python release matching the device's CUDA "
            "(`edgekit device setup` does)".format("; ".join(parts)))


def load_cuda() -> Cuda:
    """The first binding that reaches the driver (cuda-python, then pycuda); else CudaUnavailable."""
    report = []
    for factory in BINDINGS:
        binding, info = try_binding(factory)
        if binding is not None:
            return binding
        report.append(info)
    raise CudaUnavailable(unavailable_message(report))
