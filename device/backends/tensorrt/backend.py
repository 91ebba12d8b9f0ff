"""TensorRT backend: build an engine natively on the device, run and benchmark it like trtexec.

Written against TensorRT's Python API for 8.5 and later (JetPack 5: 8.5, JetPack 6.0: 8.6, JetPack
6.1/6.2: 10.3, TensorRT 11): ONNX parser, builder config (memory pool, flags where the version still has
them, optimisation level, optimisation profile, timing cache, DLA with GPU fallback, progress monitor on
10+), and the name-based tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
Every decision is made by the pure ``trt_plan`` module; every name used here is checked against the
names NVIDIA's own bindings expose (tests/test_api_conformance.py). Nothing here reports a figure that
TensorRT did not produce.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ...benchmark import Plan
from ...contract.manifest import CALIBRATION_CACHE
from ...errors import JobError, StaleEngine
from ..base import Backend, BackendUnavailable, Engine, Progress
from .cuda import CudaUnavailable, load_cuda
from .gpu_timing import measure_gpu
from .jetson import jetson_facts
from .plan import (
    BuildPlan,
    PlanError,
    TrtVersion,
    describe_parser_error,
    dla_placement,
    engine_identity,
    plan_build,
    restamp_cache,
    run_chunks,
)
from .trtexec import cross_check

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
        self.version = self.version.with_build(installed_package_version(self.version.major))
        if (self.version.major, self.version.minor) < (8, 5):
            raise BackendUnavailable("TensorRT {} is too old; edgekit needs 8.5+ (JetPack 5)".format(self.version))
        try:
            self.cuda = load_cuda()
            self.device_name, self.capability = self.cuda.device()
        except CudaUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a driver error after the probe is still "CUDA unavailable"
            raise BackendUnavailable("CUDA unavailable: {}: {}".format(type(exc).__name__, exc)) from None
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._dla_cores: Optional[int] = None
        self._identity: Optional[Dict[str, Any]] = None

    def dla_cores(self) -> int:
        if self._dla_cores is None:
            try:
                builder = self.trt.Builder(self.logger)
            except Exception as exc:  # noqa: BLE001 - `status` must say why, never crash
                raise BackendUnavailable("TensorRT cannot create a builder: {}".format(exc)) from None
            self._dla_cores = int(getattr(builder, "num_DLA_cores", 0))
        return self._dla_cores

    def describe(self) -> Dict[str, Any]:
        return {"version": self.version.full, "device": self.device_name,
                "compute_capability": "{}.{}".format(*self.capability), "cuda_driver": self.cuda.driver_version(),
                "cuda_binding": "{} {}".format(self.cuda.name, self.cuda.version()), "dla_cores": self.dla_cores(),
                "implicit_int8": self.version.implicit_int8, "strongly_typed": self.version.strongly_typed}

    def identity(self) -> Dict[str, Any]:
        """Read once per agent process: a job asks several times, and jetson_facts runs `nvpmodel -q`."""
        if self._identity is None:
            self._identity = engine_identity(self.version, self.device_name, self.capability, None,
                                             self.cuda.driver_version(), jetson_facts().get("l4t"),
                                             None if self.version.build else loaded_library_stamp())
        return dict(self._identity)

    def failure(self, message: str) -> JobError:
        """A job error whose report names this TensorRT: the host decides from it which files the next push
        needs (a device upgraded to TensorRT 11 fails before any engine exists)."""
        return JobError(message, {"backend": self.name, "backend_describe": {"version": self.version.full}})

    # -- build --------------------------------------------------------------------------------
    def plan(self, options: Dict[str, Any]) -> BuildPlan:
        try:
            cores = self.dla_cores() if options.get("dla_core") is not None else 0
            return plan_build(options, self.version, cores, sorted(options.get("model_paths", {})))
        except PlanError as exc:
            raise self.failure(str(exc)) from None

    def job_options(self, agent_root: Path, engines: Path, files: Mapping[str, Path]) -> Dict[str, Any]:
        """The timing cache, one per TensorRT version, kept beside the engines (later builds skip the tactic
        timing it holds); every ONNX file of the bundle, since the plan picks the one this version builds
        from; the calibration cache for implicit INT8."""
        version = self.identity().get("version", "unknown")
        extra: Dict[str, Any] = {
            "timing_cache_path": str(engines / "timing-tensorrt-{}.cache".format(version)),
            "model_paths": {name: str(path) for name, path in files.items() if name.endswith(".onnx")}}
        if CALIBRATION_CACHE in files:
            extra["calibration_cache"] = str(files[CALIBRATION_CACHE])
        return extra

    def build(self, model: Path, engine_dir: Path, options: Dict[str, Any], progress: Progress) -> Dict[str, Any]:
        trt = self.trt
        plan = self.plan(options)
        model = Path(options.get("model_paths", {}).get(plan.model_file, model))
        for warning in plan.warnings:
            progress("warning: " + warning)
        builder = trt.Builder(self.logger)
        flags = 0
        for flag in plan.network_flags:
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model.read_bytes()):
            raise self.failure("TensorRT cannot parse {}: {}".format(plan.model_file, "; ".join(
                self._parser_errors(parser, options.get("graph")))))
        config = builder.create_builder_config()
        self._configure(builder, config, plan, options, engine_dir)
        placement = self._placement(network, config, plan, progress)
        monitor = self._progress(config, plan, progress)
        progress("building TensorRT {} engine ({}{}, {})".format(
            self.version.full, plan.precision, ", strongly typed" if plan.strongly_typed else "",
            "DLA core {}".format(plan.dla_core) if plan.dla_core is not None else "GPU"))
        start = time.perf_counter()
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            build_s = time.perf_counter() - start
            monitor.stop()
        if serialized is None:
            raise self.failure("TensorRT could not build the engine; the agent log has TensorRT's messages")
        (engine_dir / ENGINE_FILE).write_bytes(bytes(serialized))
        self._save_timing_cache(config, options)
        return {"file": ENGINE_FILE, "build_s": build_s, "trt_version": self.version.full,
                "placement": placement, "model_file": plan.model_file,
                "plan": {"flags": list(plan.flags), "precision": plan.precision, "int8_mode": plan.int8_mode,
                         "dla_core": plan.dla_core, "workspace_bytes": plan.workspace_bytes,
                         "optimization_level": plan.optimization_level, "profile": list(plan.profile),
                         "model_file": plan.model_file, "strongly_typed": plan.strongly_typed,
                         "warnings": list(plan.warnings), "cleared_flags": list(plan.cleared_flags)}}

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
        for flag in plan.cleared_flags:  # strict FP32: TF32 is on in a new config by default
            config.clear_flag(getattr(trt.BuilderFlag, flag))
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

    def _placement(self, network: Any, config: Any, plan: BuildPlan, progress: Progress) -> Optional[Dict[str, Any]]:
        """Which layers the builder can put on the DLA (the rest fall back to the GPU), said before building."""
        if plan.dla_core is None:
            return None
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        placement = dla_placement([(layer.name, bool(config.can_run_on_DLA(layer))) for layer in layers],
                                  plan.dla_core)
        if placement["dla_layers"] == 0:
            raise JobError("no layer of this model can run on DLA core {}; drop dla_core to build for the GPU"
                           .format(plan.dla_core))
        progress(placement["summary"])
        return placement

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
        path = engine_dir / meta["file"]
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise StaleEngine("TensorRT {} could not load the cached engine {} (built by another TensorRT build or "
                              "driver?)".format(self.version.full, path))
        profile = meta["plan"]["profile"]
        # each engine its own allocations: closing the baseline must not free the final engine's buffers
        return TrtEngine(self.trt, self.cuda.child(), runtime, engine, int(profile[1][0]), int(profile[3][0]), path,
                         meta["plan"].get("dla_core"))


def installed_package_version(major: int) -> Optional[str]:
    """JetPack's libnvinfer package version ('10.3.0.30-1+cuda12.5'): the build number the 10.3.0 bindings'
    ``__version__`` lacks. None off Debian or when the package is not installed."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnvinfer{}".format(major)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def loaded_library_stamp(maps: Path = Path("/proc/self/maps")) -> Optional[str]:
    """'path:size:mtime' of the libnvinfer this process loaded: stands in for a build number nobody reports
    (a library replaced in place changes it)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in lines if "/libnvinfer.so" in line})
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        return "{}:{}:{}".format(os.path.realpath(path), info.st_size, int(info.st_mtime))
    return None


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
    """Buffers for the largest batch in the engine's own I/O types, pinned host memory, trtexec's three streams."""

    def __init__(self, trt: Any, cuda: Any, runtime: Any, engine: Any, min_batch: int, max_batch: int,
                 path: Optional[Path] = None, dla_core: Optional[int] = None) -> None:
        self.trt, self.cuda, self.runtime, self.engine = trt, cuda, runtime, engine
        self.path, self.dla_core = path, dla_core
        self.context = engine.create_execution_context()
        self.streams = {"input": cuda.stream(), "compute": cuda.stream(), "output": cuda.stream()}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise JobError("edgekit runs single-input, single-output classifiers; the engine has {} inputs and "
                           "{} outputs".format(len(self.inputs), len(self.outputs)))
        self.min_batch, self.max_batch = min_batch, max_batch
        self.chw = tuple(int(d) for d in tuple(engine.get_tensor_shape(self.inputs[0]))[1:])
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.inputs[0])))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.outputs[0])))
        self._shape(max_batch)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.outputs[0]))
        self.host_in = cuda.host_array((max_batch,) + self.chw, self.in_dtype)
        self.host_out = cuda.host_array(out_shape, self.out_dtype)
        self.dev_in = cuda.malloc(self.host_in.nbytes)
        self.dev_out = cuda.malloc(self.host_out.nbytes)
        self.context.set_tensor_address(self.inputs[0], self.dev_in)
        self.context.set_tensor_address(self.outputs[0], self.dev_out)

    def _shape(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise JobError("batch {} is outside the engine's profile ({}..{})".format(
                batch, self.min_batch, self.max_batch))
        if not self.context.set_input_shape(self.inputs[0], (batch,) + self.chw):
            raise JobError("TensorRT rejected input shape {} for {}".format(
                [batch] + list(self.chw), self.inputs[0]))

    def _slices(self, batch: int) -> Any:
        return self.host_in[:batch], self.host_out[:batch]

    def _enqueue(self, stream: Any) -> None:
        if not self.context.execute_async_v3(self.cuda.stream_handle(stream)):
            raise JobError("TensorRT execution failed")

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Any number of samples: chunks of the profile's maximum, the last padded up to its minimum."""
        results = []
        stream = self.streams["compute"]
        for start, stop, size in run_chunks(len(inputs), self.min_batch, self.max_batch):
            self._shape(size)
            host_in, host_out = self._slices(size)
            host_in[:stop - start] = inputs[start:stop]
            host_in[stop - start:] = inputs[stop - 1:stop]  # padding rows: a copy of the last sample
            self.cuda.htod(self.dev_in, host_in, stream)
            self._enqueue(stream)
            self.cuda.dtoh(host_out, self.dev_out, stream)
            self.cuda.sync(stream)
            results.append(np.array(host_out[:stop - start], dtype=np.float32, copy=True))
        return np.concatenate(results)

    def benchmark(self, batch: int, plan: Plan, cuda_graph: bool = False, profile_layers: bool = False,
                  cross_check: bool = False) -> Dict[str, Any]:
        """trtexec's loop and definitions (gpu_timing); optional CUDA graph, per-layer profile, trtexec run."""
        self._shape(batch)
        host_in, host_out = self._slices(batch)
        host_in[...] = np.random.default_rng(0).standard_normal(host_in.shape).astype(self.in_dtype)
        compute = self.streams["compute"]
        graph, note = None, ""
        if cuda_graph:
            self._enqueue(compute)  # one run first: TensorRT allocates on the first enqueue
            self.cuda.sync(compute)
            graph, note = self.cuda.capture_graph(compute, lambda: self._enqueue(compute))
        launch = (lambda stream: self.cuda.launch_graph(graph, stream)) if graph is not None else self._enqueue
        try:
            result = measure_gpu(self.cuda, self.streams, launch,
                                 lambda stream: self.cuda.htod(self.dev_in, host_in, stream),
                                 lambda stream: self.cuda.dtoh(host_out, self.dev_out, stream), batch, plan)
        finally:
            if graph is not None:
                self.cuda.destroy_graph(graph)
        result.update(cuda_graph=graph is not None,
                      source="TensorRT {} via {}".format(self.trt.__version__, self.cuda.name))
        if note:
            result["cuda_graph_note"] = note
        if profile_layers:
            result["layers_ms"] = self._profile_layers(compute)
        if cross_check:
            result["trtexec"] = cross_check_engine(self, batch, plan, graph is not None, result)
            if result["trtexec"].get("flagged"):
                flagged = "trtexec cross-check: " + "; ".join(result["trtexec"]["flagged"])
                result["warning"] = "; ".join(w for w in (result.get("warning"), flagged) if w)
        return result

    def _profile_layers(self, stream: Any, runs: int = 10) -> Dict[str, float]:
        """Mean time per layer as TensorRT's profiler reports it; the profiler is detached afterwards."""
        trt = self.trt
        totals: Dict[str, float] = {}

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms

        self.context.profiler = Profiler()
        try:
            for _ in range(runs):
                self._enqueue(stream)
                self.cuda.sync(stream)
        finally:
            self.context.profiler = None  # later timings must not pay for profiling
        return {name: value / runs for name, value in sorted(totals.items(), key=lambda kv: -kv[1])}

    def close(self) -> None:
        """Context before engine before runtime (TensorRT's documented order), then this engine's CUDA memory
        (its own view of the binding: the driver connection stays for the other engines)."""
        for name in ("context", "engine", "runtime"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)
        self.cuda.close()


def cross_check_engine(runner: TrtEngine, batch: int, plan: Plan, cuda_graph: bool,
                       ours: Dict[str, Any]) -> Dict[str, Any]:
    """trtexec on the same engine file and shape; the comparison, or why it could not run."""
    if runner.path is None:
        return {"ran": False, "reason": "the engine file is unknown"}
    return cross_check(runner.path, runner.inputs[0], (batch,) + runner.chw, plan, cuda_graph, runner.dla_core,
                       TrtVersion.parse(runner.trt.__version__), ours)
