"""ONNX Runtime backend: the CPU (or any execution provider present) where there is no TensorRT."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..benchmark import Plan, measure
from ..cpu import cpu_model, describe_cpu
from .base import PROFILE_RUNS, Backend, BackendUnavailable, Engine, Progress, median_per_layer

ENGINE_FILE = "model.ort.onnx"
# Providers we never pick automatically: TensorRT has its own backend, the others need setup.
_SKIP = {"TensorrtExecutionProvider", "AzureExecutionProvider"}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
    return onnxruntime


def choose_providers(available: List[str], requested: Any) -> List[str]:
    """Requested providers in order (must exist), else every available one but the skipped, CPU last."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable("execution provider(s) {} not available here (have: {})".format(
                ", ".join(missing), ", ".join(available)))
        return list(requested)
    chosen = [p for p in available if p not in _SKIP and p != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]


class OrtEngine(Engine):
    def __init__(self, session: Any, profiler: Optional[Callable[[str], Any]] = None) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        self.output = session.get_outputs()[0].name
        self.profiler = profiler  # a second session of the same file, with ONNX Runtime's profiler on

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: inputs})[0]

    def benchmark(self, batch: int, plan: Plan, profile_layers: bool = False, **_: Any) -> Dict[str, Any]:
        shape = [batch] + [int(d) for d in self.session.get_inputs()[0].shape[1:]]
        data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        result = measure(lambda: self.run(data), batch, plan)
        result["transfers"] = "host memory (CPU): no separate H2D/D2H"
        if profile_layers and self.profiler is not None:
            result["layers_ms"] = self._profile_layers(data)
        return result

    def _profile_layers(self, data: np.ndarray, runs: int = PROFILE_RUNS) -> Dict[str, float]:
        """Median time per node as ONNX Runtime's profiler reports it (its own JSON trace, read here), from a
        separate session: the timed one must not pay for profiling. Names are ONNX Runtime's node names after
        its fusions (often the fused chain's output tensor); the host maps them onto its layers."""
        with tempfile.TemporaryDirectory(prefix="edgekit-ort-profile-") as folder:
            session = self.profiler(str(Path(folder) / "profile"))
            feed = {session.get_inputs()[0].name: data}
            for _ in range(runs):
                session.run(None, feed)
            trace = session.end_profiling()
            return median_per_layer(node_times(json.loads(Path(trace).read_text())), runs)


def node_times(trace: List[Dict[str, Any]]) -> Dict[str, List[float]]:
    """ONNX Runtime's profile (Chrome trace events) → each node's ms in every run, in run order."""
    runs = {}  # type: Dict[str, List[float]]
    for event in trace:
        name = event.get("name", "") if isinstance(event, dict) else ""
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            runs.setdefault(name[:-len("_kernel_time")], []).append(float(event.get("dur", 0)) / 1000.0)
    return runs


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self) -> None:
        self.ort = _import_ort()

    def describe(self) -> Dict[str, Any]:
        return {"version": self.ort.__version__, "providers": self.ort.get_available_providers(),
                "cpu": cpu_model(), "isa": describe_cpu()}

    def identity(self) -> Dict[str, Any]:
        return {"backend": self.name, "version": self.ort.__version__, "cpu": cpu_model(),
                "machine": platform.machine()}

    def _options(self, options: Dict[str, Any], optimised_path: str = "") -> Any:
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(options.get("threads", 0))
        so.log_severity_level = 3
        if optimised_path:
            so.optimized_model_filepath = optimised_path
        return so

    def build(self, model: Path, engine_dir: Path, options: Dict[str, Any], progress: Progress) -> Dict[str, Any]:
        """'Building' for ONNX Runtime is running every graph optimisation once and saving the result."""
        providers = choose_providers(self.ort.get_available_providers(), options.get("providers"))
        progress("optimising graph with ONNX Runtime {} ({})".format(self.ort.__version__, ", ".join(providers)))
        start = time.perf_counter()
        target = engine_dir / ENGINE_FILE
        self.ort.InferenceSession(str(model), sess_options=self._options(options, str(target)), providers=providers)
        return {"file": ENGINE_FILE, "providers": providers, "build_s": time.perf_counter() - start,
                "threads": int(options.get("threads", 0))}

    def load(self, engine_dir: Path, meta: Dict[str, Any]) -> Engine:
        path = str(engine_dir / meta["file"])
        session = self.ort.InferenceSession(path, sess_options=self._options(meta), providers=meta["providers"])

        def profiler(prefix: str) -> Any:
            options = self._options(meta)
            options.enable_profiling = True
            options.profile_file_prefix = prefix
            return self.ort.InferenceSession(path, sess_options=options, providers=meta["providers"])
        return OrtEngine(session, profiler)
