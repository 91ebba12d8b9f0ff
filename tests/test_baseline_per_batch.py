"""The report's baseline at each batch size is the unpruned model on the runtime/precision fastest *there* (without
calibration), so each batch size's headline speed-up is over the best a user could run at that size.

The rule is pure and tested on figures (``fastest_per_batch``); the agent's baseline step is tested with the real
ONNX Runtime and OpenVINO building and running the unpruned file, each made slow at one batch size by a fixed
delay so that the crossing is certain; the report then names the baseline per batch size.
"""

from __future__ import annotations

import time

import pytest

from edgekit.device.agent.spool import Spool
from edgekit.device.contract.manifest import MODEL_BASELINE, FileEntry, Manifest, sha256_file
from edgekit.device.jobs.auto import NOISE_PERCENT, Candidate, fastest_per_batch, serve

from .test_baseline_precision import tiny_onnx

SIZES = [1, 16]
DELAY_S = 0.02  # far above a tiny model's run time on either runtime


def runtime(name, b16, b1, passed=True):
    return Candidate(name, MODEL_BASELINE, passed, round_medians_ms=list(b16), other_batches={1: list(b1)})


def test_the_baseline_at_each_batch_size_is_the_fastest_there_without_a_margin():
    """OpenVINO bf16 fastest at batch 16, ONNX Runtime FP32 at batch 1 by less than serve's noise margin: the
    baseline follows the fastest at each size (a margin would flatter the speed-up); what failed never counts."""
    ov = runtime("openvino", [4.0, 4.1, 4.0], [1.02, 1.03, 1.02])
    ort = runtime("onnxruntime", [10.0, 10.2, 9.9], [1.00, 1.00, 1.01])
    broken = runtime("tensorrt", [0.1], [0.01], passed=False)
    assert 1.02 / 1.00 - 1 < NOISE_PERCENT / 100
    assert fastest_per_batch([ov, ort, broken], SIZES, 16) == {1: "onnxruntime", 16: "openvino"}
    assert serve([ov, ort], SIZES, 16).served == {1: "openvino", 16: "openvino"}  # serve saves an engine; not so here
    assert fastest_per_batch([ort], SIZES, 16) == {1: "onnxruntime", 16: "onnxruntime"}
    with pytest.raises(ValueError):
        fastest_per_batch([broken], SIZES, 16)


class SlowAt:
    """A real backend whose engines sleep ``DELAY_S`` before each run at the batch sizes in ``slow``."""

    def __init__(self, backend, slow):
        self._backend, self._slow = backend, set(slow)

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def load(self, folder, meta):
        return SlowEngine(self._backend.load(folder, meta), self._slow)


class SlowEngine:
    def __init__(self, engine, slow):
        self._engine, self._slow = engine, slow

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run(self, data):
        if data.shape[0] in self._slow:
            time.sleep(DELAY_S)
        return self._engine.run(data)


def test_the_agent_measures_the_baseline_per_batch_size_and_the_report_names_each(tmp_path):
    pytest.importorskip("openvino")
    from edgekit.device.backends import available
    from edgekit.device.jobs.baseline import strict_baseline, user_baseline
    from edgekit.device.jobs.context import Job
    from edgekit.device.jobs.measure import benchmark_phase
    from edgekit.host.records.report import latency_rows, summary_lines

    found = available(("onnxruntime", "openvino"))
    assert set(found) == {"onnxruntime", "openvino"}
    model = tiny_onnx(tmp_path / MODEL_BASELINE)
    manifest = Manifest("tiny", "input", [3, 8, 8], SIZES, "int8", "auto",
                        {MODEL_BASELINE: FileEntry(MODEL_BASELINE, sha256_file(model), model.stat().st_size)},
                        benchmark={"baseline": True, "warmup_s": 0.0, "duration_s": 0.0, "min_iterations": 3,
                                   "rounds": 2})
    spool = Spool(tmp_path / "root").ensure()
    job = Job(spool, "j1")
    spool.job_dir("j1").mkdir()
    backends = {"onnxruntime": SlowAt(found["onnxruntime"], [16]), "openvino": SlowAt(found["openvino"], [1])}
    users = user_baseline(job, manifest, {MODEL_BASELINE: model}, backends)
    try:
        assert {b: users[b].info["backend"] for b in SIZES} == {1: "onnxruntime", 16: "openvino"}
        assert users[1].info["label"] == "unpruned FP32 on onnxruntime"
        assert users[16].info["label"].startswith("unpruned ") and users[16].info["label"].endswith(" on openvino")
        race = users[1].info["race"]
        assert race["onnxruntime"]["other_batches"]["1"] < race["openvino"]["other_batches"]["1"]
        assert race["openvino"]["median_ms"] < race["onnxruntime"]["median_ms"]
        because = users[1].info["chosen_because"]
        assert "batch 1: unpruned FP32 on onnxruntime" in because and "batch 16: unpruned " in because
        # strict FP32 on ONNX Runtime is the batch-1 baseline itself: not built twice, not measured twice
        ort = found["onnxruntime"]
        strict = strict_baseline(job, manifest, {MODEL_BASELINE: model}, ort, users)
        assert strict is users[1]
        final = ort.load(*_built(ort, model, tmp_path / "final"))
        results = benchmark_phase(job, manifest, ort, final, users, None, None, {"onnxruntime": strict})
        final.close()
    finally:
        for each in {id(b): b for b in users.values()}.values():
            each.engine.close()
    assert [r["baseline"]["label"] for r in results] == [users[1].info["label"], users[16].info["label"]]
    assert results[0]["speedup_fp32"] == results[0]["speedup"] and results[0]["baseline_fp32"]["same_as"]
    assert results[1]["baseline_fp32"]["label"] == "unpruned FP32 on onnxruntime"
    report = {"status": "done", "backend": "onnxruntime", "precision": "fp32", "model_file": MODEL_BASELINE,
              "benchmarks": results, "validation": {"passed": True, "top1_agreement": 1.0, "cosine_min": 1.0},
              "baseline": users[1].info, "baseline_fp32": users[1].info,
              "host": {"accuracy_by_file": {MODEL_BASELINE: 0.9}}}
    assert [row["baseline"] for row in latency_rows(report, "local")] == [users[1].info["label"],
                                                                         users[16].info["label"]]
    headline = summary_lines(report)[1]
    assert "the unpruned model as a user would run it at each batch size" in headline
    assert f"b1: {results[0]['speedup']:.2f}× vs unpruned FP32 on onnxruntime" in headline
    assert f"b16: {results[1]['speedup']:.2f}× vs {users[16].info['label']}" in headline


def _built(backend, model, folder):
    folder.mkdir()
    meta = backend.build(model, folder, {"precision": "fp32", "batch_sizes": SIZES, "input_name": "input",
                                         "input_shape": [3, 8, 8]}, lambda message: None)
    return folder, meta


def test_a_single_runtime_is_the_baseline_at_every_batch_size(tmp_path):
    from edgekit.device.backends import available
    from edgekit.device.jobs.baseline import user_baseline
    from edgekit.device.jobs.context import Job

    model = tiny_onnx(tmp_path / MODEL_BASELINE)
    manifest = Manifest("tiny", "input", [3, 8, 8], SIZES, "fp32", "onnxruntime",
                        {MODEL_BASELINE: FileEntry(MODEL_BASELINE, sha256_file(model), model.stat().st_size)})
    spool = Spool(tmp_path / "root").ensure()
    spool.job_dir("j1").mkdir()
    users = user_baseline(Job(spool, "j1"), manifest, {MODEL_BASELINE: model},
                          {"onnxruntime": available(("onnxruntime",))["onnxruntime"]})
    assert set(users) == set(SIZES) and users[1] is users[16] and users[1].info["backend"] == "onnxruntime"
    users[1].engine.close()
    off = Manifest("tiny", "input", [3, 8, 8], SIZES, "fp32", "onnxruntime", manifest.files,
                   benchmark={"baseline": False})
    assert user_baseline(Job(spool, "j1"), off, {MODEL_BASELINE: model}) == {}
