"""OpenVINO backend: the fastest runtime for our ONNX files on many CPUs (x86 and ARM), and Intel GPUs/NPUs.

Building reads the bundle's ONNX once and saves it as OpenVINO IR in the engine directory; loading
compiles the IR for one static batch size at a time (static shapes are what NPUs need and are faster on
CPUs), with OpenVINO's model cache in the agent root so a recompile after a restart is a cache hit.
Inference precision: precision "fp16" leaves it to OpenVINO (its default: bf16 on CPUs with AVX512-BF16 or
AMX, f16 on ARM and GPUs), which is what a user runs and what the report's baseline is; "fp32" and "int8"
pin it to f32 so the answers are the ones the host validated (INT8 layers stay INT8 either way). What a
compiled model really runs is read back from it (``executed_precision``), never assumed.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ..benchmark import Plan, measure
from ..cpu import cpu_model, describe_cpu
from .base import PROFILE_RUNS, Backend, BackendUnavailable, Engine, Progress, median_per_layer

IR_FILE = "model.xml"
DEFAULT_DEVICE = "CPU"


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("openvino is not installed (pip install openvino)") from None
    if not hasattr(openvino, "Core") or not hasattr(openvino, "save_model"):
        raise BackendUnavailable("openvino {} is too old; edgekit needs 2023.1 or newer".format(
            getattr(openvino, "__version__", "?")))
    return openvino


def openvino_version(ov: Any) -> str:
    """'2026.4.1' from OpenVINO's build string ('2026.4.1-22982-e213a147257-releases/2026/4')."""
    full = ov.get_version() if hasattr(ov, "get_version") else getattr(ov, "__version__", "unknown")
    return str(full).split("-", 1)[0]


def choose_device(available: List[str], requested: Optional[str]) -> str:
    """The requested OpenVINO device (it must exist; 'GPU' matches 'GPU.0'), else the CPU."""
    wanted = (requested or DEFAULT_DEVICE).upper()
    if wanted in ("AUTO", "MULTI", "HETERO") or wanted.startswith(("AUTO:", "MULTI:", "HETERO:")):
        return wanted
    if any(name == wanted or name.split(".")[0] == wanted for name in available):
        return wanted
    raise BackendUnavailable("OpenVINO device {} is not present here (have: {})".format(
        wanted, ", ".join(available) or "none"))


def compile_config(device: str, threads: int, cache_dir: Optional[str], precision: str = "fp32") -> Dict[str, str]:
    """Latency-oriented, one stream, the model cache where the agent keeps it; f32 inference precision unless
    ``precision`` is "fp16" (then OpenVINO's default, untouched)."""
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision != "fp16":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if device == "CPU":
        config["NUM_STREAMS"] = "1"
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir:
        config["CACHE_DIR"] = cache_dir
    return config


class OpenVinoEngine(Engine):
    """One compiled model per batch size, compiled on first use from the saved IR."""

    def __init__(self, ov: Any, core: Any, ir: Path, device: str, config: Dict[str, str]) -> None:
        self.ov, self.core, self.ir, self.device, self.config = ov, core, ir, device, config
        self.requests = {}  # type: Dict[int, Any]
        self.compiled = {}  # type: Dict[int, Any]
        shape = list(core.read_model(str(ir)).inputs[0].get_partial_shape())
        self.chw = [int(d.get_length()) for d in shape[1:]]

    def request(self, batch: int) -> Any:
        if batch not in self.requests:
            model = self.core.read_model(str(self.ir))
            model.reshape({model.inputs[0].get_any_name(): [batch] + self.chw})
            self.compiled[batch] = self.core.compile_model(model, self.device, self.config)
            self.requests[batch] = self.compiled[batch].create_infer_request()
        return self.requests[batch]

    def executed_precision(self) -> Optional[str]:
        """The inference precision the compiled model runs ('bf16', 'f16', 'f32'), as OpenVINO reports it."""
        for compiled in self.compiled.values():
            return executed_precision(compiled)
        return None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        request = self.request(len(inputs))
        data = np.ascontiguousarray(inputs, dtype=np.float32)
        try:
            result = request.infer({0: data}, share_inputs=True)
        except TypeError:  # OpenVINO 2023.0 named it shared_memory
            result = request.infer({0: data}, shared_memory=True)
        return np.array(result[0], copy=True)

    def benchmark(self, batch: int, plan: Plan, profile_layers: bool = False, **_: Any) -> Dict[str, Any]:
        data = np.random.default_rng(0).standard_normal([batch] + self.chw).astype(np.float32)
        result = measure(lambda: self.run(data), batch, plan)
        result["transfers"] = ("host memory (CPU): no separate H2D/D2H" if self.device == "CPU"
                               else "{}: transfers included in latency".format(self.device))
        if profile_layers:
            result["layers_ms"] = self._profile_layers(data)
        return result

    def _profile_layers(self, data: np.ndarray, runs: int = PROFILE_RUNS) -> Dict[str, float]:
        """Median ms per executed node (OpenVINO's performance counters, read after every run: they hold the last
        one), from a second compile with the counters on, so the timed one does not pay for them. Each node is
        named by the ONNX nodes it was made of (the runtime model's ``originalLayersNames``: its own names, such
        as "Multiply_4979" for a folded BatchNorm, mean nothing to the host); the host maps those onto its layers."""
        model = self.core.read_model(str(self.ir))
        model.reshape({model.inputs[0].get_any_name(): list(data.shape)})
        config = {key: value for key, value in self.config.items() if key != "CACHE_DIR"}
        compiled = self.core.compile_model(model, self.device, dict(config, PERF_COUNT="YES"))
        names = original_names(compiled.get_runtime_model())
        request = compiled.create_infer_request()
        times = {}  # type: Dict[str, List[float]]
        for _ in range(runs):
            request.infer({0: data})
            for info in request.get_profiling_info():
                if str(info.status).endswith("EXECUTED"):
                    times.setdefault(names.get(info.node_name, info.node_name), []).append(
                        info.real_time.total_seconds() * 1000.0)
        return median_per_layer(times, runs)

    def close(self) -> None:
        self.requests.clear()
        self.compiled.clear()


def original_names(runtime_model: Any) -> Dict[str, str]:
    """Executed node → the source nodes fused into it ("/a/Conv/WithoutBiases, /a/Relu"), where OpenVINO kept them."""
    names = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        if "originalLayersNames" in info:
            value = info["originalLayersNames"]
            text = value.astype(str) if hasattr(value, "astype") else str(value)
            names[op.get_friendly_name()] = ", ".join(part for part in text.split(",") if part)
    return names


def executed_precision(compiled: Any) -> Optional[str]:
    """A compiled model's INFERENCE_PRECISION_HINT property: what it runs, whatever was (or was not) asked."""
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except Exception:  # noqa: BLE001 - a plugin without the property (some NPUs) runs what it runs
        return None
    name = getattr(value, "get_type_name", None)
    return str(name() if callable(name) else value)


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self) -> None:
        self.ov = _import_openvino()
        self.core = self.ov.Core()
        self.version = openvino_version(self.ov)

    def _device_name(self, device: str) -> str:
        try:
            return str(self.core.get_property(device, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001 - a plugin that cannot say its name is still usable
            return device

    def describe(self) -> Dict[str, Any]:
        build = str(self.ov.get_version()) if hasattr(self.ov, "get_version") else ""
        devices = {name: self._device_name(name) for name in self.core.available_devices}
        return {"version": self.version, "build": build, "devices": devices, "cpu": cpu_model(), "isa": describe_cpu()}

    def identity(self) -> Dict[str, Any]:
        cpu = describe_cpu()
        return {"backend": self.name, "version": self.version, "cpu": cpu["model"], "isa": cpu["isa"],
                "machine": platform.machine()}

    def job_options(self, agent_root: Path, engines: Path, files: Mapping[str, Path]) -> Dict[str, Any]:
        """OpenVINO's model cache in the agent root, kept across jobs and restarts: a recompile is a cache hit."""
        return {"openvino_cache_dir": str(agent_root / "cache" / "openvino")}

    def build(self, model: Path, engine_dir: Path, options: Dict[str, Any], progress: Progress) -> Dict[str, Any]:
        """Convert the ONNX to IR once; compile each batch size now so errors and the cache come early."""
        device = choose_device(list(self.core.available_devices), options.get("openvino_device"))
        threads = int(options.get("threads", 0))
        cache_dir = options.get("openvino_cache_dir")
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        progress("converting {} to OpenVINO IR with OpenVINO {} for {} ({})".format(
            model.name, self.version, device, self._device_name(device.split(":")[0])))
        start = time.perf_counter()
        self.ov.save_model(self.core.read_model(str(model)), str(engine_dir / IR_FILE), compress_to_fp16=False)
        precision = str(options.get("precision", "fp32"))
        config = compile_config(device, threads, cache_dir, precision)
        engine = OpenVinoEngine(self.ov, self.core, engine_dir / IR_FILE, device, config)
        for batch in options.get("batch_sizes", []):
            engine.request(int(batch))
        executed = engine.executed_precision()
        engine.close()
        return {"file": IR_FILE, "device": device, "config": {k: v for k, v in config.items() if k != "CACHE_DIR"},
                "cache_dir": cache_dir, "build_s": time.perf_counter() - start, "threads": threads,
                "precision": precision, "executed_precision": executed}

    def load(self, engine_dir: Path, meta: Dict[str, Any]) -> Engine:
        config = compile_config(meta["device"], int(meta.get("threads", 0)), meta.get("cache_dir"),
                                meta.get("precision", "fp32"))
        return OpenVinoEngine(self.ov, self.core, engine_dir / meta["file"], meta["device"], config)
