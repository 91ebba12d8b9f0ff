"""The TensorRT/CUDA review's defects, each pinned by a test: real cuda-python where CUDA is loaded,
test doubles (tests/trt_doubles.py) around TensorRT, which cannot be installed here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.device.backends.tensorrt.cuda import CudaPython, CudaUnavailable, cuda_bindings, load_cuda
from edgekit.device.backends.tensorrt.gpu_timing import measure_gpu
from edgekit.device.backends.tensorrt.plan import (
    PlanError,
    TrtVersion,
    dla_placement,
    engine_identity,
    plan_build,
    run_chunks,
)
from edgekit.device.benchmark import Plan
from edgekit.device.errors import JobError

from .trt_doubles import FakeCuda, fake_trt

BASE = {"precision": "fp32", "batch_sizes": [1, 32], "input_name": "input", "input_shape": [3, 32, 32]}
FAST = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=6)


# -- 1. a binding that imports but cannot reach a driver is not "CUDA" --------------------------------
@pytest.fixture(autouse=True)
def no_cuda_driver(request):
    """These tests need cuda-python installed and no CUDA driver (this project's CI); skip visibly elsewhere."""
    if "driver" not in request.keywords and "stand_in_tensorrt" not in request.fixturenames:
        return
    pytest.importorskip("cuda.bindings", reason="cuda-python is in the dev extra")
    if CudaPython().rt.cudaDriverGetVersion()[1]:
        pytest.skip("a CUDA driver is present: the driverless paths cannot be exercised here")


@pytest.mark.driver
def test_cuda_python_without_driver_is_unavailable_and_pycuda_is_tried():
    with pytest.raises(CudaUnavailable) as failure:
        load_cuda()
    message = str(failure.value)
    assert message.startswith("CUDA unavailable: cuda-python 1")
    assert "cudaErrorInsufficientDriver" in message or "no CUDA driver" in message
    assert "pycuda: not installed" in message and "\n" not in message
    report = {row["binding"]: row for row in cuda_bindings()}
    assert report["cuda-python"]["usable"] is False and report["cuda-python"]["version"].startswith("1")
    assert report["pycuda"]["usable"] is False


@pytest.fixture
def stand_in_tensorrt(tmp_path):
    """A `tensorrt` package that only has a version: enough to reach the CUDA step (TensorRT is not installable)."""
    package = tmp_path / "stand_in" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "10.3.0.30"\n')
    return package.parent


def test_tensorrt_backend_reports_cuda_unavailable_not_a_traceback(stand_in_tensorrt):
    pytest.importorskip("cuda.bindings")
    code = ("from edgekit.device.backends import get_backend, BackendUnavailable\n"
            "try:\n    get_backend('tensorrt')\nexcept BackendUnavailable as exc:\n    print('UNAVAILABLE', exc)\n")
    env = dict(os.environ, PYTHONPATH=str(stand_in_tensorrt))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("UNAVAILABLE CUDA unavailable: cuda-python"), done.stderr


def test_agent_status_never_crashes_and_shows_each_binding(stand_in_tensorrt, tmp_path):
    pytest.importorskip("cuda.bindings")
    agent = Path(sys.executable).parent / "edgekit-agent"
    env = dict(os.environ, PYTHONPATH=str(stand_in_tensorrt))
    done = subprocess.run([str(agent), "status", "--root", str(tmp_path / "root")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    status = json.loads(done.stdout)
    assert status["backends"]["tensorrt"]["available"] is False
    assert status["backends"]["tensorrt"]["reason"].startswith("CUDA unavailable")
    assert [b["binding"] for b in status["cuda"]] == ["cuda-python", "pycuda"]


# -- 2. CUDA graphs: one signature for every CUDA major, failure falls back, graphs freed ------------
@pytest.mark.driver
def test_graph_capture_failure_returns_a_note_instead_of_raising():
    graph, note = CudaPython().capture_graph(0, lambda: None)
    assert graph is None and note.startswith("CUDA graph capture failed")


def test_benchmark_falls_back_to_plain_enqueue_when_capture_fails_and_frees_graphs():
    trt, cuda = fake_trt(), FakeCuda(capture_error="cudaErrorStreamCaptureUnsupported")
    engine = make_engine(trt, cuda)
    result = engine.benchmark(1, FAST, cuda_graph=True)
    assert result["cuda_graph"] is False and "capture failed" in result["cuda_graph_note"]
    ok_cuda = FakeCuda()
    result = make_engine(fake_trt(), ok_cuda).benchmark(1, FAST, cuda_graph=True)
    assert result["cuda_graph"] is True and ok_cuda.destroyed_graphs == 1


# -- 3. TensorRT 11: strongly typed, no FP16/INT8 flags, host-typed ONNX -----------------------------
def test_tensorrt_11_builds_from_typed_onnx_without_precision_flags():
    v11, v103 = TrtVersion.parse("11.0.0.114"), TrtVersion.parse("10.3.0")
    files = ["model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.qdq.fp16.onnx"]
    fp16 = plan_build(dict(BASE, precision="fp16"), v11, files=files)
    assert fp16.flags == () and fp16.model_file == "model.fp16.onnx" and fp16.strongly_typed
    int8 = plan_build(dict(BASE, precision="int8"), v11, files=files)
    assert int8.flags == () and int8.model_file == "model.int8.qdq.fp16.onnx"
    assert plan_build(dict(BASE, precision="int8", int8_fp16_fallback=False), v11, files=files).model_file \
        == "model.int8.qdq.onnx"
    with pytest.raises(PlanError, match="needs model.fp16.onnx"):
        plan_build(dict(BASE, precision="fp16"), v11, files=["model.onnx"])
    old = plan_build(dict(BASE, precision="int8"), v103, files=files)
    assert old.flags == ("INT8", "FP16") and old.model_file == "model.int8.qdq.onnx" and not old.strongly_typed
    assert plan_build(dict(BASE, precision="fp16"), v103, files=["model.onnx"]).model_file == "model.onnx"
    assert plan_build(BASE, TrtVersion.parse("8.5.2")).network_flags == ("EXPLICIT_BATCH",)
    assert plan_build(BASE, v11).network_flags == ()


def test_every_builder_flag_the_plan_sets_exists_in_that_version():
    fixtures = Path(__file__).parent / "fixtures" / "api"
    for path in sorted(fixtures.glob("tensorrt-*.json")):
        classes = json.loads(path.read_text())["classes"]
        version = TrtVersion.parse(path.stem.split("-")[1])
        for precision in ("fp32", "fp16", "int8"):
            plan = plan_build(dict(BASE, precision=precision), version)
            missing = [f for f in plan.flags if f not in classes["BuilderFlag"]["enum"]]
            missing += [f for f in plan.network_flags if f not in classes["NetworkDefinitionCreationFlag"]["enum"]]
            assert not missing, f"TensorRT {version} has no {missing} ({precision})"


# -- 4. the per-layer profiler is detached after use ------------------------------------------------
def test_profile_layers_detaches_the_profiler():
    trt, cuda = fake_trt(), FakeCuda()
    engine = make_engine(trt, cuda)
    result = engine.benchmark(1, FAST, profile_layers=True)
    assert result["layers_ms"] == {"conv1": pytest.approx(0.5)}
    assert engine.context.profiler is None


# -- 5. DLA: checked before building, placement said ------------------------------------------------
def test_dla_refuses_a_dynamic_profile_and_reports_placement():
    v = TrtVersion.parse("8.5.2")
    with pytest.raises(PlanError, match="static shapes only"):
        plan_build(dict(BASE, precision="fp16", dla_core=0), v, dla_cores=2)
    plan = plan_build(dict(BASE, precision="fp16", dla_core=0, batch_sizes=[8]), v, dla_cores=2)
    assert plan.dla_core == 0 and "GPU_FALLBACK" in plan.flags
    placement = dla_placement([("conv1", True), ("conv2", True), ("softmax", False)], 0)
    assert placement["gpu_fallback_layers"] == ["softmax"]
    assert placement["summary"] == "DLA core 0: 2 of 3 layers; 1 on the GPU"


# -- 7. trtexec's definitions ------------------------------------------------------------------------
def test_latency_is_the_sum_of_h2d_compute_d2h_on_three_chained_streams():
    cuda = FakeCuda()
    streams = {"input": "in", "compute": "gpu", "output": "out"}
    result = measure_gpu(cuda, streams, lambda s: None, lambda s: cuda.calls.append(("copy_in", s)),
                         lambda s: cuda.calls.append(("copy_out", s)), 1, FAST)
    # each copy/compute is bracketed by two records one clock step apart: 1 ms each, latency 3 ms
    assert result["h2d_ms"]["median"] == 1 and result["gpu_compute_ms"]["median"] == 1
    assert result["latency_ms"]["median"] == 3  # not first event → last event (which would be 5)
    assert ("copy_in", "in") in cuda.calls and ("copy_out", "out") in cuda.calls
    assert ("wait", "gpu") in cuda.calls and ("wait", "out") in cuda.calls
    assert "trtexec: Latency" in result["definitions"]["latency_ms"] and result["iterations"] >= 6


# -- 8. engine identity -----------------------------------------------------------------------------
def test_engine_identity_has_the_build_number_and_the_driver_not_the_binding_runtime():
    version = TrtVersion.parse("10.3.0.30")
    identity = engine_identity(version, "Orin", (8, 7), None, 12060, "36.4.3")
    assert identity["version"] == "10.3.0.30" and identity["cuda_driver"] == 12060 and identity["l4t"] == "36.4.3"
    assert engine_identity(TrtVersion.parse("10.3.0.26"), "Orin", (8, 7), None, 12060, "36.4.3") != identity


def test_an_engine_that_does_not_deserialize_asks_for_a_rebuild(tmp_path):
    from edgekit.device.backends.tensorrt.backend import TensorRTBackend
    from edgekit.device.errors import StaleEngine

    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.trt = type("T", (), {"Runtime": lambda self, logger: type("R", (), {
        "deserialize_cuda_engine": lambda self, blob: None})()})()
    backend.version, backend.logger = TrtVersion.parse("10.3.0.30"), None
    (tmp_path / "engine.plan").write_bytes(b"old")
    with pytest.raises(StaleEngine, match="could not load the cached engine"):
        backend.load(tmp_path, {"file": "engine.plan", "plan": {"profile": ["input", [1], [8], [8]]}})


# -- 9. the smaller ones ----------------------------------------------------------------------------
def test_rejected_input_shape_is_an_error_not_garbage():
    trt, cuda = fake_trt(), FakeCuda()
    engine = make_engine(trt, cuda)
    engine.min_batch = 0  # let our own range check pass: TensorRT's answer must still be checked
    with pytest.raises(JobError, match="rejected input shape"):
        engine._shape(0)


def test_last_validation_chunk_is_padded_to_the_profile_minimum():
    assert run_chunks(10, 4, 8) == [(0, 8, 8), (8, 10, 4)]
    trt, cuda = fake_trt(), FakeCuda()
    engine = make_engine(trt, cuda, low=4, high=8)
    inputs = np.random.default_rng(0).standard_normal((10, 3, 4, 4)).astype(np.float32)
    out = engine.run(inputs)
    assert out.shape == (10, 10) and engine.context.enqueued == [8, 4]
    expected = inputs.reshape(10, -1).mean(1, keepdims=True) * np.arange(10)
    assert np.allclose(out, expected, atol=1e-5)


def test_engine_io_types_come_from_the_engine():
    trt, cuda = fake_trt(io_dtype=np.float16), FakeCuda()
    engine = make_engine(trt, cuda)
    assert engine.host_in.dtype == np.float16 and engine.host_out.dtype == np.float16
    out = engine.run(np.ones((2, 3, 4, 4), dtype=np.float32))
    assert out.dtype == np.float32 and np.allclose(out[0], np.arange(10))


def test_teardown_releases_context_then_engine_then_runtime():
    trt, cuda = fake_trt(), FakeCuda()
    engine = make_engine(trt, cuda)
    engine.close()
    assert trt.teardown == ["context", "engine", "runtime"] and cuda.closed


def make_engine(trt, cuda, low: int = 1, high: int = 8):
    from edgekit.device.backends.tensorrt.backend import TrtEngine

    return TrtEngine(trt, cuda, trt.Runtime(), trt.Engine(cuda, low, high, (3, 4, 4)), low, high)


@pytest.mark.slow
def test_push_with_a_driverless_cuda_binding_fails_clearly_or_falls_back(project, stand_in_tensorrt):
    """End to end, the agent a real process: TensorRT "present", cuda-python real but without a driver."""
    pytest.importorskip("cuda.bindings")
    from .conftest import run_cli

    env = dict(os.environ, PYTHONPATH=str(stand_in_tensorrt))
    config = project / "deploy.toml"
    root = project.parent / "home" / "local-device"
    base = config.read_text()
    config.write_text(base + f'\n[devices.local]\nkind = "local"\nbackend = "tensorrt"\nroot = "{root}"\n')
    failed = run_cli("push", "local", "--json", cwd=project, env=env)
    assert failed.returncode == 1 and "CUDA unavailable: cuda-python" in failed.stderr
    assert "Traceback" not in failed.stderr and "internal error" not in failed.stderr
    config.write_text(base + f'\n[devices.local]\nkind = "local"\nbackend = "tensorrt"\nallow_fallback = true\n'
                             f'root = "{root}"\n')
    fallback = run_cli("push", "local", "--json", cwd=project, env=env)
    assert fallback.returncode == 0, fallback.stderr
    report = json.loads(fallback.stdout)["report"]
    assert report["backend"] == "onnxruntime" and "CUDA unavailable" in report["fallback"]


@pytest.mark.slow
def test_job_rebuilds_a_cached_engine_that_no_longer_loads(project, monkeypatch):
    """Defect 8, job level: the first load says StaleEngine (another runtime build); the job rebuilds once."""
    from edgekit.device.backends.onnxruntime import OnnxRuntimeBackend
    from edgekit.device.errors import StaleEngine
    from edgekit.device.jobs import prepare as prepare_step
    from edgekit.device.jobs.runner import JobRunner

    from .test_agent import prepare, publish

    loads = []

    class Upgraded(OnnxRuntimeBackend):
        def load(self, engine_dir, meta):
            loads.append(engine_dir)
            if len(loads) == 1:
                raise StaleEngine("cannot load the cached engine {}".format(engine_dir))
            return super().load(engine_dir, meta)

    monkeypatch.setattr(prepare_step, "get_backend", lambda name: Upgraded())
    with (project / "deploy.toml").open("a") as config:  # one named backend, not the auto race
        config.write('\n[devices.local]\nkind = "local"\nbackend = "onnxruntime"\n')
    transport, manifest, key = prepare(project)
    job = publish(transport, manifest, key)
    transport.spool.claim(job)
    report = JobRunner(transport.spool).run(job)
    assert report["status"] == "done", report.get("error")
    # the final engine is loaded twice (stale, then rebuilt); the baseline engine is loaded after it
    assert loads[0] == loads[1] and loads.count(loads[0]) == 2 and report["engine_reused"] is False
    events = (transport.spool.jobs / job / "events.jsonl").read_text()
    assert "rebuilding it" in events
