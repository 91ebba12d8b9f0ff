"""Issue 23, the second TensorRT/Jetson review: one test per defect, each failing on the code before the fix.

TensorRT runs through the proxy of its real bindings (tests/trt_api/proxy.py); pycuda through a stand-in
module that behaves like pycuda where it matters (it aborts the process at exit when a context is still
pushed); cuda-python is the real package (no driver here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from edgekit.device.backends.tensorrt import backend as trt_backend
from edgekit.device.backends.tensorrt.cuda import PyCuda
from edgekit.device.backends.tensorrt.jetson import JETPACK, jetpack_for, parse_tegrastats
from edgekit.device.benchmark import Plan, interleaved
from edgekit.device.errors import JobError

from .trt_api.proxy import Semantics, tensorrt_module
from .trt_doubles import FakeCuda

ROOT = Path(__file__).resolve().parent.parent
TEGRASTATS = Path(__file__).parent / "fixtures" / "tegrastats"
BASE = {"batch_sizes": [1, 4], "input_name": "input", "input_shape": [3, 8, 8]}
FILES = ("model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.qdq.fp16.onnx")

FAKE_PYCUDA = '''
"""pycuda as far as edgekit uses it; like pycuda, it aborts at exit while a context is still pushed."""
import atexit, os, sys
import numpy as np

_stack = []
freed = []


def init():
    pass


def get_driver_version():
    return 12060


class Context:
    def push(self):
        _stack.append(self)

    @staticmethod
    def pop():
        _stack.pop()

    def detach(self):
        pass


class Device:
    @staticmethod
    def count():
        return 1

    def __init__(self, index):
        pass

    def make_context(self):
        context = Context()
        _stack.append(context)
        return context

    def retain_primary_context(self):
        return Context()

    def name(self):
        return "Orin (stand-in pycuda)"

    def compute_capability(self):
        return (8, 7)


class Allocation:
    def __init__(self, size):
        self.size = size

    def __int__(self):
        return id(self)

    def free(self):
        freed.append(self)


def mem_alloc(size):
    return Allocation(size)


def pagelocked_empty(shape, dtype):
    return np.zeros(shape, dtype)


class Stream:
    handle = 7

    def synchronize(self):
        pass

    def wait_for_event(self, event):
        pass

    def begin_capture(self):
        raise AssertionError("no pycuda release binds stream capture")


class Event:
    def record(self, stream=None):
        pass

    def synchronize(self):
        pass

    def time_since(self, other):
        return 1.0


def memcpy_htod_async(dest, src, stream=None):
    pass


def memcpy_dtoh_async(dest, src, stream=None):
    pass


def _module_cleanup():
    if _stack:
        sys.stderr.write("PyCUDA ERROR: The context stack was not empty upon module cleanup.\\n"
                         "The program will be aborted now.\\n")
        sys.stderr.flush()
        os.abort()


atexit.register(_module_cleanup)
'''


@pytest.fixture
def stand_ins(tmp_path):
    """A directory with `pycuda` (the stand-in above) and `tensorrt` (the proxy of the 10.3.0 wheel)."""
    site = tmp_path / "site"
    (site / "pycuda").mkdir(parents=True)
    (site / "pycuda" / "__init__.py").write_text('VERSION_TEXT = "2025.1"\n')
    (site / "pycuda" / "driver.py").write_text(FAKE_PYCUDA)
    (site / "tensorrt").mkdir()
    (site / "tensorrt" / "__init__.py").write_text(
        "import sys\nfrom tests.trt_api.proxy import tensorrt_module\n"
        "sys.modules[__name__] = tensorrt_module('10.3.0')\n")
    return site


def fake_pycuda_binding(site: Path) -> PyCuda:
    """A PyCuda on the stand-in driver, probed (context pushed) in this process."""
    spec = {"name": "fake_pycuda_driver"}
    module = types.ModuleType(spec["name"])
    exec(compile(FAKE_PYCUDA.replace("atexit.register(_module_cleanup)", ""), "fake_pycuda", "exec"),
         module.__dict__)
    binding = PyCuda.__new__(PyCuda)
    binding.module, binding.driver, binding.context, binding.owns_context, binding.keep = \
        types.SimpleNamespace(VERSION_TEXT="2025.1"), module, None, False, []
    binding.probe()
    return binding


def make_backend(monkeypatch, version: str, cuda=None, package: str | None = None):
    trt = tensorrt_module(version, Semantics(dla_cores=0, chw=tuple(BASE["input_shape"])))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "load_cuda", (lambda: cuda) if cuda is not None else FakeCuda)
    monkeypatch.setattr(trt_backend, "jetson_facts", lambda: {"jetson": True, "l4t": "36.4.3"})
    monkeypatch.setattr(trt_backend, "installed_package_version", lambda major: package, raising=False)
    return trt_backend.TensorRTBackend(), trt


def build(backend, tmp_path: Path, options: dict, files=FILES) -> dict:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    paths = {}
    for name in files:
        (folder / name).write_bytes(b"onnx")
        paths[name] = folder / name
    engines = tmp_path / "engines"
    engines.mkdir(exist_ok=True)
    out = tmp_path / "engine-{}".format(len(list(tmp_path.glob("engine-*"))))
    out.mkdir()
    meta = backend.build(paths["model.onnx"], out, dict(options, **backend.job_options(tmp_path, engines, paths)),
                         lambda message: None)
    return {"dir": out, "meta": meta}


# -- 1. `edgekit-agent status` must not abort where pycuda is the working binding ------------------------------
def test_agent_status_with_pycuda_exits_cleanly(stand_ins, tmp_path):
    pytest.importorskip("cuda.bindings")  # the real cuda-python, failing without a driver, is tried first
    agent = Path(sys.executable).parent / "edgekit-agent"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stand_ins), str(ROOT)]))
    done = subprocess.run([str(agent), "status", "--root", str(tmp_path / "root")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert "aborted" not in done.stderr and done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout)
    assert status["backends"]["tensorrt"]["available"] is True, status["backends"]["tensorrt"]
    assert {b["binding"]: b["usable"] for b in status["cuda"]}["pycuda"] is True


# -- 2. a device upgraded from TensorRT 10 to 11 gets the FP16-typed file again ---------------------------------
def test_a_failed_tensorrt_11_job_names_its_tensorrt(monkeypatch, tmp_path):
    backend, _ = make_backend(monkeypatch, "11.0.0.114")
    with pytest.raises(JobError) as failure:
        build(backend, tmp_path, dict(BASE, precision="fp16"), files=("model.onnx",))
    assert "push again" in str(failure.value)
    assert failure.value.details["backend_describe"]["version"] == "11.0.0.114"


@pytest.mark.parametrize("newest, ships", [
    ({"status": "failed", "backend": "tensorrt", "backend_describe": {"version": "11.0.0.114"},
      "error": "TensorRT 11.0.0 builds strongly typed networks and needs model.fp16.onnx in the bundle"}, True),
    ({"status": "failed", "error": "TensorRT 11.0.0 builds strongly typed networks and needs model.fp16.onnx in "
                                   "the bundle; push again with this edgekit"}, True),  # an agent before the fix
    ({"status": "failed", "error": "bundle signature does not verify"}, False),  # says nothing: 10.3 still holds
])
def test_push_after_an_upgrade_to_tensorrt_11_ships_the_typed_file(monkeypatch, tmp_path, newest, ships):
    from edgekit.host.config import DeviceSection
    from edgekit.host.optimize.quantize import fp16
    from edgekit.host.records.history import History

    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    config = types.SimpleNamespace(state_dir=tmp_path / "state")
    history = History(config.state_dir / "history.db")
    history.record("orin", {"job": "j1", "status": "done", "backend": "tensorrt",
                            "backend_describe": {"version": "10.3.0.30"}})
    with history.db:
        history.db.execute("UPDATE runs SET created = created - 60")
    history.record("orin", dict(newest, job="j2"))
    monkeypatch.setattr(fp16, "write_fp16", lambda source, target: target.write_bytes(b"fp16") and target)
    device = DeviceSection(kind="local", backend="tensorrt", precision="fp16")
    added = fp16.typed_files_for(config, "orin", device, {"model.onnx": model})
    assert ("model.fp16.onnx" in added) is ships


# -- 3. interleaved TensorRT rounds merge every query; diagnostics run once ----------------------------------------
def test_interleaved_tensorrt_rounds_keep_every_iteration(monkeypatch, tmp_path):
    backend, trt = make_backend(monkeypatch, "10.3.0")
    built = build(backend, tmp_path, dict(BASE, precision="fp16"))
    final, base = backend.load(built["dir"], built["meta"]), backend.load(built["dir"], built["meta"])
    compute_runs = []
    original = final.benchmark

    def counted(batch, plan, **extras):
        result = original(batch, plan, **extras)
        compute_runs.append(result["iterations"])
        return result

    plan = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=40)
    merged = interleaved({"final": lambda p: counted(1, p), "baseline": lambda p: base.benchmark(1, p)}, plan,
                         rounds=4)
    assert len(compute_runs) == 4 and merged["final"]["iterations"] == sum(compute_runs) >= 40
    assert merged["baseline"]["iterations"] >= 40 and merged["final"]["rounds"] == 4
    assert "series_ms" not in merged["final"] and len(merged["final"]["samples_ms"]) == sum(compute_runs)
    assert not trt._violations


class Recorder:
    """An engine whose benchmark records how it was called and whether the power window was open."""

    def __init__(self, sampler) -> None:
        self.calls, self.sampler = [], sampler

    def benchmark(self, batch, plan, **extras):
        self.calls.append((dict(extras), self.sampler.open))
        samples = [1.0] * plan.min_iterations
        result = {"batch": batch, "iterations": len(samples), "wall_s": 0.01, "samples_ms": samples,
                  "latency_ms": {"median": 1.0, "cv_percent": 0.0}}
        if extras.get("profile_layers"):
            result["layers_ms"] = {"conv": 0.5}
        if extras.get("cross_check"):
            result["trtexec"] = {"ran": False, "reason": "not here"}
        return result

    def close(self) -> None:
        pass


class Window:
    def __init__(self) -> None:
        self.open = False

    @contextmanager
    def window(self):
        self.open = True
        try:
            yield
        finally:
            self.open = False


def test_diagnostics_run_once_and_power_covers_only_the_final_engines_rounds():
    from edgekit.device.jobs.baseline import Baseline
    from edgekit.device.jobs.measure import benchmark_phase

    sampler = Window()
    final, baseline = Recorder(sampler), Recorder(sampler)
    manifest = types.SimpleNamespace(batch_sizes=[1, 8], benchmark={
        "warmup_s": 0.0, "duration_s": 0.0, "min_iterations": 8, "rounds": 4, "profile_layers": True,
        "cross_check": True, "cuda_graph": True})
    backend = types.SimpleNamespace(benchmark_options=lambda settings: {
        "cuda_graph": True, "profile_layers": True, "cross_check": True})
    job = types.SimpleNamespace(event=lambda *args, **kwargs: None)
    results = benchmark_phase(job, manifest, backend, final,
                              dict.fromkeys([1, 8], Baseline(baseline, {"label": "unpruned fp16 on tensorrt"})),
                              sampler)
    diagnostics = [c for c in final.calls if c[0].get("profile_layers") or c[0].get("cross_check")]
    assert len(diagnostics) == 2 and not any(open_ for _, open_ in diagnostics)  # once per batch size
    timed = [c for c in final.calls if c not in diagnostics]
    assert len(timed) == 8 and all(open_ and c == {"cuda_graph": True} for c, open_ in timed)
    assert all(not open_ and c == {"cuda_graph": True} for c, open_ in baseline.calls)
    assert results[0]["layers_ms"] == {"conv": 0.5} and results[0]["iterations"] == 8


# -- 4. closing the baseline engine leaves the final engine's GPU resources alone ----------------------------------
def test_closing_one_engine_keeps_the_others_memory_and_context(monkeypatch, tmp_path, stand_ins):
    binding = fake_pycuda_binding(stand_ins)
    backend, trt = make_backend(monkeypatch, "10.3.0", cuda=binding)
    built = build(backend, tmp_path, dict(BASE, precision="fp16"))
    final = backend.load(built["dir"], built["meta"])
    base = backend.load(built["dir"], built["meta"])
    base.close()
    driver = binding.driver
    assert len(driver._stack) == 1, "the baseline's close popped the context the final engine runs in"
    assert not any(a in driver.freed for a in final.cuda.keep), "the final engine's buffers were freed"
    assert final.run(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 10)
    final.close()
    binding.close()
    assert driver._stack == [] and not trt._violations


# -- 5. telemetry: every rail, captured lines, R39 -----------------------------------------------------------------
def captured(name: str) -> tuple[str, str]:
    """(line, source URL) of a captured tegrastats fixture."""
    text = (TEGRASTATS / name).read_text().splitlines()
    source = next(line.split(":", 1)[1].strip() for line in text if line.startswith("# source:"))
    return next(line for line in text if line and not line.startswith("#")), source


def test_agx_xavier_rails_are_all_kept():
    line, source = captured("agx_xavier_jetpack4.txt")
    assert source.startswith("https://github.com/")
    rails = parse_tegrastats(line)["power_mw"]
    assert set(rails) == {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}
    assert parse_tegrastats(line)["ram_mb"]["used"] == 14700 and "RAM" not in rails and "SWAP" not in rails


def test_jetpack_r39_is_known():
    assert jetpack_for("39.2.0") == JETPACK["39.2"] and jetpack_for("39.2.0").startswith("7.")


# -- 6. pycuda has no stream capture: no dead path, no false message ----------------------------------------------
def test_pycuda_never_tries_a_stream_capture(stand_ins):
    binding = fake_pycuda_binding(stand_ins)
    stream = binding.stream()  # the stand-in's stream raises if capture is attempted
    graph, note = binding.capture_graph(stream, lambda: None)
    assert graph is None and "pycuda 2025.1 cannot capture CUDA graphs" in note and "2021.1" not in note
    binding.close()


# -- 7. the engine key carries the build number the wheel's __version__ lacks --------------------------------------
def test_engine_identity_has_a_build_number_when_version_has_none(monkeypatch):
    backend, _ = make_backend(monkeypatch, "10.3.0", package="10.3.0.30-1+cuda12.5")
    assert backend.trt.__version__ == "10.3.0" and backend.identity()["version"] == "10.3.0.30"
    backend, _ = make_backend(monkeypatch, "10.3.0", package="10.4.0.26-1+cuda12.6")  # another release: ignored
    assert backend.identity()["version"] == "10.3.0"


def test_without_a_build_number_the_loaded_library_identifies_the_engine(monkeypatch, tmp_path):
    library = tmp_path / "libnvinfer.so.10.3.0"
    library.write_bytes(b"one build")
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 08:01 123 {}\n".format(library))
    first = trt_backend.loaded_library_stamp(maps)
    library.write_bytes(b"another build, another size")
    assert first and trt_backend.loaded_library_stamp(maps) != first
    monkeypatch.setattr(trt_backend, "loaded_library_stamp", lambda: first)
    backend, _ = make_backend(monkeypatch, "10.3.0")
    assert backend.identity()["library"] == first


def test_identity_is_read_once(monkeypatch):
    backend, _ = make_backend(monkeypatch, "10.3.0", package="10.3.0.30-1+cuda12.5")
    calls = []
    monkeypatch.setattr(trt_backend, "jetson_facts", lambda: calls.append(1) or {"l4t": "36.4.3"})
    for _ in range(6):
        backend.identity()
    assert len(calls) <= 1


# -- 8. the report and validation name the file TensorRT 11 really built --------------------------------------------
@pytest.mark.parametrize("options, typed", [({"precision": "fp16"}, "model.fp16.onnx"),
                                            ({"precision": "int8", "int8_mode": "explicit"},
                                             "model.int8.qdq.fp16.onnx")])
def test_tensorrt_11_reports_the_typed_file_it_built(monkeypatch, tmp_path, options, typed):
    from edgekit.device.contract.model_files import model_file
    from edgekit.device.jobs.prepare import built_from

    backend, _ = make_backend(monkeypatch, "11.0.0.114")
    built = build(backend, tmp_path, dict(BASE, **options))
    chosen = model_file("tensorrt", options["precision"], options.get("int8_mode", "explicit"), None, FILES)
    assert chosen != typed  # the jobs-level choice is the other file
    assert built_from(built["meta"], chosen, FILES) == typed
