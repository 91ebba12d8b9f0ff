"""The real TensorRT backend and CUDA module driven against proxies of NVIDIA's real binding wheels.

tests/trt_api/extract.py records each wheel's surface (tensorrt-bindings 8.6.1, tensorrt-cu12-bindings
10.3.0 (JetPack 6.1/6.2), 10.16 and 11.0; cuda-python 11.8.2 (JetPack 5), 11.8.7, 12.6, 12.9, 13.0) into
tests/fixtures/api/; tests/trt_api/proxy.py turns a surface into a ``tensorrt`` module whose classes have
exactly the wheel's members and signatures. The backend's own code then builds, loads, runs, profiles,
calibrates and places on DLA for every precision on every version, so a wrong name, a wrong argument count
or a wrong version gate fails here however it is spelled; a misspelled or missing override of a TensorRT
callback fails because the proxy calls the callbacks as TensorRT does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from edgekit.device.backends.tensorrt import backend as trt_backend
from edgekit.device.backends.tensorrt import cuda as cuda_module
from edgekit.device.backends.tensorrt.plan import TrtVersion
from edgekit.device.benchmark import Plan
from edgekit.device.errors import JobError

from .trt_api.cuda_proxy import cuda_runtime, cuda_versions
from .trt_api.proxy import ApiViolation, Semantics, surface_versions, tensorrt_module
from .trt_doubles import FakeCuda

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "api"
TRT_VERSIONS = surface_versions()
FAST = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=4)
BASE = {"batch_sizes": [1, 4], "input_name": "input", "input_shape": [3, 8, 8]}
SCENARIOS = {
    "fp32": {"precision": "fp32"},
    "fp16": {"precision": "fp16", "builder_optimization_level": 3},
    "int8-explicit": {"precision": "int8", "int8_mode": "explicit"},
    "int8-explicit-no-fp16": {"precision": "int8", "int8_mode": "explicit", "int8_fp16_fallback": False},
    "int8-implicit": {"precision": "int8", "int8_mode": "implicit"},
    "dla-fp16": {"precision": "fp16", "dla_core": 1, "batch_sizes": [4]},
    "dla-int8": {"precision": "int8", "dla_core": 0, "batch_sizes": [2]},
}
MODEL_FILES = ("model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.qdq.fp16.onnx",
               "model.int8.onnx")


def test_fixtures_are_the_real_wheels():
    assert {"8.6.1", "10.3.0", "11.0.0.114"} <= set(TRT_VERSIONS), TRT_VERSIONS
    surfaces = {v: json.loads((FIXTURES / f"tensorrt-{v}.json").read_text()) for v in TRT_VERSIONS}
    assert "8.6.1" in surfaces["8.6.1"]["source"] and "tensorrt-bindings==8.6.1" in surfaces["8.6.1"]["source"]
    classes = {v: s["classes"] for v, s in surfaces.items()}
    # what a source-parsed 8.6 table got wrong, and the 11.0 removals the migration guide names
    assert "serialize" not in classes["8.6.1"]["INetworkDefinition"]["members"]
    assert "float16" in surfaces["8.6.1"]["constants"] and "ResizeMode" in classes["8.6.1"]
    assert "FP16" in classes["10.3.0"]["BuilderFlag"]["enum"]
    assert "FP16" not in classes["11.0.0.114"]["BuilderFlag"]["enum"]
    assert "IInt8EntropyCalibrator2" not in classes["11.0.0.114"]
    assert "IProgressMonitor" not in classes["8.6.1"] and "IProgressMonitor" in classes["10.3.0"]
    assert {"11.8.2", "11.8.7"} <= set(cuda_versions()) and any(v.startswith("12.") for v in cuda_versions()) \
        and any(v.startswith("13.") for v in cuda_versions())


# -- the proxy itself must catch what the real wheel would reject -------------------------------------------
@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_proxy_rejects_what_the_wheel_rejects(version):
    trt = tensorrt_module(version)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    with pytest.raises((AttributeError, ApiViolation)):
        config.max_workspace_sizee = 1  # not a member: pybind objects take no new attributes
    with pytest.raises(AttributeError):
        _ = trt.BuilderFlag.FP17
    with pytest.raises(ApiViolation):
        config.set_memory_pool_limit(1 << 20)  # wrong arity
    with pytest.raises(ApiViolation):
        config.set_flag(trt.MemoryPoolType.WORKSPACE)  # wrong enum
    with pytest.raises(ApiViolation):
        builder.num_DLA_cores = 2  # read-only
    with pytest.raises(ApiViolation):
        trt.IBuilderConfig()  # no constructor
    with pytest.raises(ApiViolation):
        class Wrong(trt.IProfiler):
            def report_layer_tme(self, layer_name, ms):  # misspelled override
                pass
    with pytest.raises(ApiViolation):
        class Short(trt.IProfiler):
            def report_layer_time(self, layer_name):  # TensorRT passes two arguments
                pass

    class NoInit(trt.IProfiler):
        def __init__(self):
            pass

        def report_layer_time(self, layer_name, ms):
            pass

    with pytest.raises(ApiViolation, match="must be called"):
        NoInit()


# -- the backend's real code against each wheel -------------------------------------------------------------
def make_backend(monkeypatch, version: str, dla_cores: int = 2) -> Any:
    semantics = Semantics(dla_cores=dla_cores, chw=tuple(BASE["input_shape"]))
    trt = tensorrt_module(version, semantics)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "load_cuda", FakeCuda)
    monkeypatch.setattr(trt_backend, "jetson_facts", lambda: {"jetson": True, "l4t": "36.4.3"})
    return trt_backend.TensorRTBackend(), trt


def expected_failure(version: TrtVersion, options: Dict[str, Any]) -> str:
    """The plan's documented refusals: no implicit INT8 on 11."""
    if options.get("int8_mode") == "implicit" and version.major >= 11:
        return "no implicit INT8"
    return ""


def build_and_run(backend: Any, tmp_path: Path, options: Dict[str, Any]) -> Dict[str, Any]:
    models = tmp_path / "bundle"
    models.mkdir(exist_ok=True)
    paths = {}
    for name in MODEL_FILES:
        (models / name).write_bytes(b"onnx:" + name.encode())
        paths[name] = models / name
    (models / "calibration.cache").write_text("TRT-8601-EntropyCalibration2\ninput: 3c000000\n")
    engines = tmp_path / "engines"
    engines.mkdir(exist_ok=True)
    extra = backend.job_options(tmp_path, engines, dict(paths, **{"calibration.cache": models / "calibration.cache"}))
    messages: List[str] = []
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir(exist_ok=True)
    meta = backend.build(paths["model.onnx"], engine_dir, dict(options, **extra), messages.append)
    engine = backend.load(engine_dir, json.loads(json.dumps(meta)))
    try:
        batch = max(options["batch_sizes"])
        out = engine.run(np.zeros((batch + 1, *BASE["input_shape"]), dtype=np.float32))
        bench = engine.benchmark(batch, FAST, cuda_graph=True, profile_layers=True, cross_check=True)
    finally:
        engine.close()
    return {"meta": meta, "out": out, "bench": bench, "messages": messages, "timing_cache": extra["timing_cache_path"]}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_backend_builds_loads_runs_and_profiles_on_each_wheel(monkeypatch, tmp_path, version, scenario):
    backend, trt = make_backend(monkeypatch, version)
    options = dict(BASE, **SCENARIOS[scenario])
    refusal = expected_failure(backend.version, options)
    backend.describe(), backend.identity()
    if refusal:
        with pytest.raises(JobError, match=refusal):
            build_and_run(backend, tmp_path, options)
    else:
        result = build_and_run(backend, tmp_path, options)
        assert result["out"].shape == (max(options["batch_sizes"]) + 1, 10)
        assert Path(result["timing_cache"]).is_file()
        assert "layers_ms" in result["bench"] and result["bench"]["iterations"] >= FAST.min_iterations
        if options.get("dla_core") is not None:
            assert result["meta"]["placement"]["dla_layers"] == 3
    assert not trt._violations, trt._violations
    calls = set(trt._semantics.calls)
    assert "Builder.build_serialized_network" in calls or refusal
    if options.get("int8_mode") == "implicit" and not refusal:
        assert "IBuilderConfig.int8_calibrator" in calls or trt._semantics.calls  # the calibrator was handed over


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_strict_fp32_clears_tf32_and_fp16_keeps_tensorrts_defaults(monkeypatch, tmp_path, version):
    """TF32 is on in a new builder config (TensorRT >= 7.1): an FP32 engine on Ampere+ would run TF32 unless the
    flag is cleared. The strict FP32 build clears it; the FP16 build (the user's baseline, trtexec --fp16) keeps it."""
    backend, trt = make_backend(monkeypatch, version)
    (tmp_path / "fp32").mkdir(), (tmp_path / "fp16").mkdir()
    fp32 = build_and_run(backend, tmp_path / "fp32", dict(BASE, precision="fp32"))
    fp16 = build_and_run(backend, tmp_path / "fp16", dict(BASE, precision="fp16"))
    assert not trt._violations, trt._violations
    assert trt._semantics.built_flags[0] == []  # nothing set, TF32 cleared
    assert "TF32" in trt._semantics.built_flags[1]  # TensorRT's default kept
    assert fp32["meta"]["plan"]["cleared_flags"] == ["TF32"] and fp16["meta"]["plan"]["cleared_flags"] == []


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_callbacks_are_called_the_way_tensorrt_calls_them(monkeypatch, tmp_path, version):
    """Progress monitor (10+), calibrator (implicit INT8, < 11) and profiler all reached through the proxy."""
    backend, trt = make_backend(monkeypatch, version)
    options = dict(BASE, precision="int8", int8_mode="implicit" if backend.version.implicit_int8 else "explicit")
    build_and_run(backend, tmp_path, options)
    assert not trt._violations, trt._violations


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_a_parser_error_is_reported_through_each_wheels_api(monkeypatch, tmp_path, version):
    backend, trt = make_backend(monkeypatch, version)
    trt._semantics.parse_ok = False
    graph = [["/conv1/Conv", "Conv"], ["/fancy/FancyOp", "FancyOp"]]
    with pytest.raises(JobError, match=r"cannot parse model.onnx: node 1 \(/fancy/FancyOp, op FancyOp\): No importer"):
        build_and_run(backend, tmp_path, dict(BASE, precision="fp32", graph=graph))
    assert not trt._violations, trt._violations


# -- cuda-python ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", cuda_versions())
def test_cuda_module_runs_against_each_cuda_python(version):
    rt = cuda_runtime(version)
    binding = cuda_module.CudaPython.__new__(cuda_module.CudaPython)
    binding.rt = rt
    binding.device_allocations, binding.host_allocations, binding.streams, binding.events = [], [], [], []
    binding.probe()
    name, capability = binding.device()
    assert capability == (8, 7) and binding.driver_version() == 12060
    host = binding.host_array((2, 3), np.float32)
    device = binding.malloc(host.nbytes)
    streams = [binding.stream() for _ in range(3)]
    start, end = binding.event(), binding.event()
    binding.record(start, streams[0])
    binding.htod(device, host, streams[0])
    binding.wait_event(streams[1], start)
    binding.dtoh(host, device, streams[1])
    binding.record(end, streams[1])
    binding.event_sync(end)
    binding.sync(streams[1])
    assert binding.elapsed_ms(start, end) >= 0.0
    graph, note = binding.capture_graph(streams[1], lambda: None)
    assert graph is not None, note
    binding.launch_graph(graph, streams[1])
    binding.destroy_graph(graph)
    binding.close()
    assert not rt._violations, rt._violations


def test_cuda_proxy_rejects_a_wrong_call():
    rt = cuda_runtime(cuda_versions()[0])
    with pytest.raises(ApiViolation):
        rt.cudaMalloc(1, 2)
    with pytest.raises(AttributeError):
        rt.cudaMallocAsyncc(1)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_the_latency_model_job_profiles_whole_models_on_each_wheel(monkeypatch, tmp_path, version, precision):
    """prune.target_latency_ms on TensorRT: the agent's latency job builds one engine per whole model (not one
    per layer variant) and returns TensorRT's per-layer profile of each, through each wheel's real API."""
    from edgekit.device.agent.spool import Spool
    from edgekit.device.contract.manifest import parse_manifest, sha256_file
    from edgekit.device.contract.protocol import LATENCY_MODEL
    from edgekit.device.jobs.context import Job
    from edgekit.device.jobs.latency import run_latency_job

    backend, trt = make_backend(monkeypatch, version)
    monkeypatch.setattr("edgekit.device.backends.get_backend", lambda name: backend)
    monkeypatch.setattr("edgekit.device.jobs.prepare.get_backend", lambda name: backend)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    files, entries, variants = {}, [], {}
    for level in ("1.0", "0.5", "0.0"):
        form = {}
        for kind in ("model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.qdq.fp16.onnx"):
            name = f"lat-{level}-{kind}"
            (bundle / name).write_bytes(f"onnx:{level}:{kind}".encode())
            files[name] = bundle / name
            entries.append({"name": name, "sha256": sha256_file(bundle / name), "size": (bundle / name).stat().st_size})
            form[kind] = name
        variants[f"whole:{level}"] = form
    variants["whole:baseline"] = variants["whole:1.0"]
    manifest = parse_manifest({
        "schema_version": 1, "kind": LATENCY_MODEL, "model": "m",
        "input": {"name": "input", "shape": BASE["input_shape"], "batch_sizes": [1]},
        "target": {"backend": "tensorrt", "precision": precision, "build": {"int8_mode": "explicit"}},
        "files": entries,
        "latency": {"graph": "g", "batch": 1, "iterations": 3, "max_seconds": 60, "variants": variants,
                    "mode": "profile"}})
    spool = Spool(tmp_path / "agent").ensure()
    job = Job(spool, "job-latency")
    job.folder.mkdir(parents=True, exist_ok=True)
    report = run_latency_job(job, manifest, files)
    assert report["status"] == "done" and report["mode"] == "profile" and report["precision"] == precision
    assert set(report["ms"]) == set(variants) and all(ms > 0 for ms in report["ms"].values())
    # layer times come only from TensorRT calling the IProfiler's report_layer_time
    assert set(report["profiles"]) == set(variants) and all(report["profiles"].values())
    assert not trt._violations, trt._violations
    assert trt._semantics.calls.count("Builder.build_serialized_network") == len(variants)  # one engine per model
