"""TensorRT backend: build an engine natively on the device, run and benchmark it like trtexec.

Written against TensorRT's documented Python API for 8.5 and later (JetPack 5: 8.5, JetPack 6.0: 8.6,
JetPack 6.1/6.2: 10.3): ONNX parser, builder config (memory pool, flags, optimisation level,
optimisation profile, timing cache, DLA with GPU fallback, progress monitor on 10+), and the
name-based tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). Every
decision is made by the pure ``trt_plan`` module; this file only carries it out. Nothing here reports
a figure that TensorRT did not produce.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..benchmark import Plan
from ..cuda import CudaUnavailable, load_cuda
from ..errors import JobError
from ..stats import summarize, throughput
from ..trt_plan import (
    BuildPlan,
    PlanError,
    TrtVersion,
    describe_parser_error,
    engine_identity,
    plan_build,
    restamp_cache,
)
from .base import Backend, BackendUnavailable, Engine, Progress

ENGINE_FILE = "engine.plan"
HEARTBEAT_S = 15.0


def _import_trt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("TensorRT Python bindings are not installed (JetPack's python3-libnvinfer)") \
            from None
    return tensorrt


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self) -> None:
        self.trt = _import_trt()
        self.version = TrtVersion.parse(self.trt.__version__)
        if (self.version.major, self.version.minor) < (8, 5):
            raise BackendUnavailable("TensorRT {} is too old; edgekit needs 8.5+ (JetPack 5)".format(self.version))
        try:
            self.cuda = load_cuda()
        except CudaUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.device_name, self.capability = self.cuda.device()

    def dla_cores(self) -> int:
        builder = self.trt.Builder(self.logger)
        return int(getattr(builder, "num_DLA_cores", 0))

    def describe(self) -> Dict[str, Any]:
        return {"version": str(self.version), "device": self.device_name,
                "compute_capability": "{}.{}".format(*self.capability), "cuda_runtime": self.cuda.runtime_version(),
                "cuda_binding": self.cuda.name, "dla_cores": self.dla_cores(),
                "implicit_int8": self.version.implicit_int8}

    def identity(self) -> Dict[str, Any]:
        return engine_identity(self.version, self.device_name, self.capability, None, self.cuda.runtime_version())

    # -- build --------------------------------------------------------------------------------
    def plan(self, options: Dict[str, Any]) -> BuildPlan:
        try:
            return plan_build(options, self.version, self.dla_cores() if options.get("dla_core") is not None else 0)
        except PlanError as exc:
            raise JobError(str(exc)) from None

    def build(self, model: Path, engine_dir: Path, options: Dict[str, Any], progress: Progress) -> Dict[str, Any]:
        trt = self.trt
        plan = self.plan(options)
        for warning in plan.warnings:
            progress("warning: " + warning)
        builder = trt.Builder(self.logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if plan.explicit_batch_flag else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model.read_bytes()):
            raise JobError("TensorRT cannot parse the model: " + "; ".join(
                self._parser_errors(parser, options.get("graph"))))
        config = builder.create_builder_config()
        self._configure(builder, config, plan, options, engine_dir)
        monitor = self._progress(config, plan, progress)
        progress("building TensorRT {} engine ({}, {})".format(
            self.version, plan.precision, "DLA core {}".format(plan.dla_core) if plan.dla_core is not None else "GPU"))
        start = time.perf_counter()
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            monitor.stop()
        if serialized is None:
            raise JobError("TensorRT could not build the engine; the agent log has TensorRT's messages")
        (engine_dir / ENGINE_FILE).write_bytes(bytes(serialized))
        self._save_timing_cache(config, options)
        return {"file": ENGINE_FILE, "build_s": time.perf_counter() - start, "trt_version": str(self.version),
                "plan": {"flags": list(plan.flags), "precision": plan.precision, "int8_mode": plan.int8_mode,
                         "dla_core": plan.dla_core, "workspace_bytes": plan.workspace_bytes,
                         "optimization_level": plan.optimization_level, "profile": list(plan.profile),
                         "model_file": plan.model_file, "warnings": list(plan.warnings)}}

    def _parser_errors(self, parser: Any, graph: Optional[List[List[str]]]) -> List[str]:
        errors = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            name = error.node_name() if hasattr(error, "node_name") else ""
            op = error.node_operator() if hasattr(error, "node_operator") else ""
            errors.append(describe_parser_error(index, error.desc(), int(error.node()), graph, name, op))
        return errors

    def _configure(self, builder: Any, config: Any, plan: BuildPlan, options: Dict[str, Any],
                   engine_dir: Path) -> None:
        trt = self.trt
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if plan.optimization_level is not None:
            config.builder_optimization_level = plan.optimization_level
        name, low, opt, high = plan.profile
        profile = builder.create_optimization_profile()
        profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        if plan.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = plan.dla_core
        cache_path = options.get("timing_cache_path")
        blob = Path(cache_path).read_bytes() if cache_path and Path(cache_path).is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)
        if plan.use_calibration_cache:
            text = restamp_cache(Path(options["calibration_cache"]).read_text(), self.version)
            (engine_dir / "calibration.cache").write_text(text)
            config.int8_calibrator = _cache_calibrator(trt, text.encode())
            config.set_calibration_profile(profile)

    def _save_timing_cache(self, config: Any, options: Dict[str, Any]) -> None:
        path = options.get("timing_cache_path")
        if not path:
            return
        tmp = "{}.{}.tmp".format(path, os.getpid())
        Path(tmp).write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, path)

    def _progress(self, config: Any, plan: BuildPlan, progress: Progress) -> _Heartbeat:
        """TensorRT 10's progress monitor where it exists, plus a heartbeat so the host sees life."""
        if plan.progress_monitor:
            config.progress_monitor = _monitor(self.trt, progress)
        return _Heartbeat(progress)

    # -- run ----------------------------------------------------------------------------------
    def load(self, engine_dir: Path, meta: Dict[str, Any]) -> Engine:
        runtime = self.trt.Runtime(self.logger)
        if meta["plan"].get("dla_core") is not None:
            runtime.DLA_core = meta["plan"]["dla_core"]
        engine = runtime.deserialize_cuda_engine((engine_dir / meta["file"]).read_bytes())
        if engine is None:
            raise JobError("TensorRT could not load the engine (built by another version or device?)")
        return TrtEngine(self.trt, self.cuda, runtime, engine, int(meta["plan"]["profile"][3][0]))


class _Heartbeat:
    """A thread that reports "still building" so long builds never look hung."""

    def __init__(self, progress: Progress) -> None:
        self.done = threading.Event()
        self.start = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(progress,), daemon=True)
        self.thread.start()

    def _run(self, progress: Progress) -> None:
        while not self.done.wait(HEARTBEAT_S):
            progress("still building ({:.0f}s)".format(time.monotonic() - self.start))

    def stop(self) -> None:
        self.done.set()


def _monitor(trt: Any, progress: Progress) -> Any:
    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: Dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                progress("TensorRT: {} ({} steps)".format(phase_name, num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Monitor()


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An entropy calibrator that only hands TensorRT the host's cache (no data on the device)."""
    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return CacheCalibrator()


class TrtEngine(Engine):
    """Buffers for the largest batch, pinned host memory, one stream, events around each phase."""

    def __init__(self, trt: Any, cuda: Any, runtime: Any, engine: Any, max_batch: int) -> None:
        self.trt, self.cuda, self.runtime, self.engine = trt, cuda, runtime, engine
        self.context = engine.create_execution_context()
        self.stream = cuda.stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise JobError("edgekit runs single-input, single-output classifiers; the engine has {} inputs and "
                           "{} outputs".format(len(self.inputs), len(self.outputs)))
        self.max_batch = max_batch
        shape = tuple(engine.get_tensor_shape(self.inputs[0]))
        self.chw = tuple(int(d) for d in shape[1:])
        self.context.set_input_shape(self.inputs[0], (max_batch,) + self.chw)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.outputs[0]))
        self.host_in = cuda.host_array((max_batch,) + self.chw, np.float32)
        self.host_out = cuda.host_array(out_shape, np.float32)
        self.dev_in = cuda.malloc(self.host_in.nbytes)
        self.dev_out = cuda.malloc(self.host_out.nbytes)
        self.context.set_tensor_address(self.inputs[0], self.dev_in)
        self.context.set_tensor_address(self.outputs[0], self.dev_out)

    def _shape(self, batch: int) -> None:
        if batch > self.max_batch:
            raise JobError("batch {} is larger than the engine's profile ({})".format(batch, self.max_batch))
        self.context.set_input_shape(self.inputs[0], (batch,) + self.chw)

    def _slices(self, batch: int) -> Any:
        per_out = self.host_out.shape[0]
        return self.host_in[:batch], self.host_out[:batch] if per_out >= batch else self.host_out

    def run(self, inputs: np.ndarray) -> np.ndarray:
        batch = len(inputs)
        self._shape(batch)
        host_in, host_out = self._slices(batch)
        host_in[...] = inputs
        handle = self.cuda.stream_handle(self.stream)
        self.cuda.htod(self.dev_in, host_in, self.stream)
        if not self.context.execute_async_v3(handle):
            raise JobError("TensorRT execution failed")
        self.cuda.dtoh(host_out, self.dev_out, self.stream)
        self.cuda.sync(self.stream)
        return np.array(host_out, copy=True)

    def benchmark(self, batch: int, plan: Plan, cuda_graph: bool = False, profile_layers: bool = False
                  ) -> Dict[str, Any]:
        """trtexec's split: H2D, GPU compute and D2H from CUDA events, enqueue time on the host."""
        self._shape(batch)
        host_in, host_out = self._slices(batch)
        host_in[...] = np.random.default_rng(0).standard_normal(host_in.shape).astype(np.float32)
        handle = self.cuda.stream_handle(self.stream)
        graph = None
        if cuda_graph:
            self.context.execute_async_v3(handle)  # one run first: TensorRT allocates on the first enqueue
            self.cuda.sync(self.stream)
            graph = self.cuda.capture_graph(self.stream, lambda: self.context.execute_async_v3(handle))
        events = [self.cuda.event() for _ in range(4)]
        samples: Dict[str, List[float]] = {"latency": [], "h2d": [], "compute": [], "d2h": [], "enqueue": []}

        def once() -> None:
            self.cuda.record(events[0], self.stream)
            self.cuda.htod(self.dev_in, host_in, self.stream)
            self.cuda.record(events[1], self.stream)
            tick = time.perf_counter()
            if graph is not None:
                self.cuda.launch_graph(graph, self.stream)
            else:
                self.context.execute_async_v3(handle)
            samples["enqueue"].append((time.perf_counter() - tick) * 1000.0)
            self.cuda.record(events[2], self.stream)
            self.cuda.dtoh(host_out, self.dev_out, self.stream)
            self.cuda.record(events[3], self.stream)
            self.cuda.sync(self.stream)
            samples["latency"].append(self.cuda.elapsed_ms(events[0], events[3]))
            samples["h2d"].append(self.cuda.elapsed_ms(events[0], events[1]))
            samples["compute"].append(self.cuda.elapsed_ms(events[1], events[2]))
            samples["d2h"].append(self.cuda.elapsed_ms(events[2], events[3]))

        start = time.perf_counter()
        while time.perf_counter() - start < plan.warmup_s:
            once()
        for values in samples.values():
            del values[:]
        begin = time.perf_counter()
        while len(samples["latency"]) < plan.min_iterations or time.perf_counter() - begin < plan.duration_s:
            once()
        wall = time.perf_counter() - begin
        result: Dict[str, Any] = {"batch": batch, "iterations": len(samples["latency"]), "wall_s": wall,
                                  "latency_ms": summarize(samples["latency"]),
                                  "h2d_ms": summarize(samples["h2d"]), "gpu_compute_ms": summarize(samples["compute"]),
                                  "d2h_ms": summarize(samples["d2h"]), "enqueue_ms": summarize(samples["enqueue"]),
                                  "cuda_graph": graph is not None, "transfers": "included (pinned host memory)",
                                  "source": "TensorRT {} via {}".format(self.trt.__version__, self.cuda.name)}
        result.update(throughput(batch, len(samples["latency"]), wall))
        compute_cv = result["gpu_compute_ms"]["cv_percent"]
        if compute_cv > plan.cv_warn_percent:
            result["warning"] = ("GPU compute time varies (CV {:.1f}% > {}%): clocks are not locked "
                                 "(run jetson_clocks) or the device throttles").format(compute_cv, plan.cv_warn_percent)
        if profile_layers:
            result["layers_ms"] = self._profile_layers(handle)
        return result

    def _profile_layers(self, handle: int, runs: int = 10) -> Dict[str, float]:
        """Mean time per layer as TensorRT's profiler reports it."""
        trt = self.trt
        totals: Dict[str, float] = {}

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms

        self.context.profiler = Profiler()
        for _ in range(runs):
            self.context.execute_async_v3(handle)
            self.cuda.sync(self.stream)
        return {name: value / runs for name, value in sorted(totals.items(), key=lambda kv: -kv[1])}

    def close(self) -> None:
        self.cuda.close()
