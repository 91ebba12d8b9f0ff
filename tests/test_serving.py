"""``precision = "auto"`` serves each batch size with the fastest validated engine (``serve``): a serving map when
no engine is as fast at every size, one file when one is; and the agent's serving map as an engine of the cache.

The choice is pure and tested on figures; the map's life on the device (switch, rollback, repair, garbage
collection) on a real spool; one push to the ``local`` device shows the report's per-batch-size lines.
"""

from __future__ import annotations

import json
import os
import statistics

import numpy as np
import pytest

from edgekit.device.agent.health import engine_problem
from edgekit.device.agent.serving import members, write_map
from edgekit.device.agent.spool import Spool
from edgekit.device.agent.store import StoreConfig, protected_set
from edgekit.device.jobs.auto import NOISE_PERCENT, Candidate, serve

SIZES = [1, 32]


def cand(backend, precision, b32, b1, passed=True, requested=True, executed=""):
    """A candidate measured at batch 32 (``round_medians_ms``) and batch 1."""
    return Candidate(backend, f"{backend}.{precision}.onnx", passed, round_medians_ms=list(b32),
                     other_batches={1: list(b1)}, precision=precision, executed=executed, requested=requested)


def test_a_crossing_is_served_by_the_fastest_at_each_batch_size():
    """OpenVINO INT8 fastest at batch 32, ONNX Runtime INT8 at batch 1 (as on the demo's CPU): each serves its
    own; the one-line reasons say by how much."""
    ov = cand("openvino", "int8", [3.0, 3.1, 3.0], [0.40, 0.41, 0.40])
    ort = cand("onnxruntime", "int8", [4.5, 4.4, 4.6], [0.20, 0.21, 0.20])
    serving = serve([ov, ort], SIZES, 32)
    assert serving.served == {1: "onnxruntime int8", 32: "openvino int8"}
    assert serving.winner == "onnxruntime int8" and serving.files == ["onnxruntime int8", "openvino int8"]
    assert serving.reasons[32].startswith("openvino int8 (openvino.int8.onnx): the fastest at batch 32, 1.50× faster "
                                          "than onnxruntime int8 (3.000 vs 4.500 ms)")
    assert serving.reasons[1].startswith("onnxruntime int8 (onnxruntime.int8.onnx): the fastest at batch 1, 2.00×")
    assert "batch 1 with onnxruntime int8, batch 32 with openvino int8" in serving.message


def test_one_file_serves_every_size_when_it_is_within_noise_of_the_fastest_everywhere():
    """bf16 is 2 % behind INT8 at batch 1 (within NOISE_PERCENT) and the fastest at 32: one engine, not two."""
    int8 = cand("openvino", "int8", [13.0, 13.1, 12.9], [1.00, 1.00, 1.00])
    bf16 = cand("openvino", "fp16", [10.0, 10.1, 9.9], [1.02, 1.02, 1.02], executed="bf16")
    serving = serve([int8, bf16], SIZES, 32)
    assert serving.served == {1: "openvino fp16", 32: "openvino fp16"} and serving.files == ["openvino fp16"]
    assert f"within {NOISE_PERCENT:g}% of the fastest at batch 1, openvino int8" in serving.reasons[1]
    assert serving.message.startswith("auto chose openvino bf16: it serves every batch size")


def test_a_gap_beyond_the_margin_is_never_served_however_noisy_the_rounds():
    """8 % slower by the median at batch 32 with one round reversed: the slower file does not serve batch 32,
    although ``choose``'s round-by-round test would have called it a tie."""
    a = cand("onnxruntime", "int8", [10.0, 10.0, 10.0, 10.0, 10.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    b = cand("openvino", "int8", [10.8, 10.9, 9.5, 10.8, 11.0], [0.90, 0.92, 0.91, 0.93, 0.90])
    serving = serve([a, b], SIZES, 32)
    assert serving.served == {1: "openvino int8", 32: "onnxruntime int8"}


def test_ties_within_noise_go_to_the_file_that_serves_more_sizes_then_the_faster_at_batch_one():
    a = cand("openvino", "int8", [10.0, 10.0], [1.00, 1.00])
    b = cand("onnxruntime", "int8", [10.3, 10.3], [0.99, 0.99])  # within noise at both sizes: a tie everywhere
    assert serve([a, b], SIZES, 32).served == {1: "onnxruntime int8", 32: "onnxruntime int8"}
    assert serve([b, a], SIZES, 32).served == {1: "onnxruntime int8", 32: "onnxruntime int8"}  # not by order


def test_a_file_that_failed_validation_or_was_not_asked_for_is_never_served():
    fast_but_wrong = cand("onnxruntime", "int8", [1.0], [0.1], passed=False)
    adviser = cand("openvino", "fp32", [2.0], [0.2], requested=False)
    slow = cand("openvino", "int8", [5.0], [0.5])
    serving = serve([fast_but_wrong, adviser, slow], SIZES, 32)
    assert serving.served == {1: "openvino int8", 32: "openvino int8"}
    assert serving.reasons[1].endswith("the only candidate that passed")
    with pytest.raises(ValueError, match="no candidate passed validation"):
        serve([fast_but_wrong], SIZES, 32)


def test_three_sizes_and_three_files_each_served_where_it_is_fastest():
    a = Candidate("openvino", "a", True, round_medians_ms=[9.0], other_batches={1: [0.1], 8: [3.0]}, precision="int8")
    b = Candidate("onnxruntime", "b", True, round_medians_ms=[6.0], other_batches={1: [0.3], 8: [1.0]},
                  precision="int8")
    c = Candidate("openvino", "c", True, round_medians_ms=[3.0], other_batches={1: [0.5], 8: [2.0]},
                  precision="fp16")
    assert serve([a, b, c], [1, 8, 32], 32).served == {1: "openvino int8", 8: "onnxruntime int8",
                                                       32: "openvino fp16"}


def measured_tables(seed: int, count: int):
    """Tables as the race measures them: 2-5 candidates, each with per-round medians at every batch size, drawn
    around a true latency per (candidate, size) with round-to-round noise and load bursts shared by a round, some
    failing validation or (explicit precision) only advising; crossings, near-ties and clear wins all occur."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        sizes = sorted(rng.choice([1, 4, 8, 32], size=int(rng.integers(1, 4)), replace=False).tolist())
        rounds = int(rng.integers(3, 10))
        bursts = {b: 1 + rng.exponential(0.1, rounds) for b in sizes}
        candidates = []
        for index in range(int(rng.integers(2, 6))):
            true = {b: float(rng.uniform(0.1, 2.0)) * b ** float(rng.uniform(0.5, 1.0)) for b in sizes}
            medians = {b: (true[b] * bursts[b] * rng.normal(1.0, 0.04, rounds)).tolist() for b in sizes}
            candidates.append(Candidate(f"rt{index}", f"file{index}.onnx", bool(rng.random() > 0.15),
                                        round_medians_ms=medians[sizes[-1]],
                                        other_batches={b: medians[b] for b in sizes[:-1]},
                                        precision=str(rng.choice(["int8", "fp16", "fp32"])),
                                        requested=bool(rng.random() > 0.1)))
        yield candidates, sizes


def test_auto_never_serves_a_file_slower_than_the_fastest_validated_alternative_on_measured_tables():
    """The rule auto ships by, over a thousand measured tables: at every batch size the file served passed
    validation, was asked for, and is no slower (median of its interleaved rounds) than the fastest validated
    alternative built, beyond the noise margin; a file that beats every other at every size beyond the margin is
    the one file served; with no valid candidate, nothing is served."""
    checked = 0
    for candidates, sizes in measured_tables(seed=22, count=1000):
        valid = [c for c in candidates if c.passed and c.requested]
        if not valid:
            with pytest.raises(ValueError):
                serve(candidates, sizes, sizes[-1])
            continue
        serving = serve(candidates, sizes, sizes[-1])
        by_name = {c.name: c for c in candidates}

        def median(candidate, size, last=sizes[-1]):
            return statistics.median(candidate.round_medians_ms if size == last else candidate.other_batches[size])

        for size in sizes:
            served = by_name[serving.served[size]]
            assert served.passed and served.requested
            assert median(served, size) <= min(median(c, size) for c in valid) * (1 + NOISE_PERCENT / 100)
            checked += 1
        margin = 1 + NOISE_PERCENT / 100
        dominant = [c for c in valid if all(median(c, b) * margin < min(median(o, b) for o in valid if o is not c)
                                            for b in sizes)] if len(valid) > 1 else valid
        if dominant:
            assert serving.files == [dominant[0].name]
    assert checked > 1000


# -- the serving map on the device ------------------------------------------------------------------------------
def _engine(spool: Spool, key: str) -> None:
    folder = spool.engines / key
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    (folder / "engine.json").write_text(json.dumps({"key": key, "backend": "onnxruntime", "file": "model.onnx"}))


def test_a_serving_map_is_an_engine_whose_engines_stay_and_must_all_be_there(tmp_path):
    spool = Spool(tmp_path / "root").ensure()
    for key in ("a" * 64, "b" * 64):
        _engine(spool, key)
    folder = write_map(spool.engines, {1: "a" * 64, 32: "b" * 64}, {"backend": "onnxruntime", "job": "j1"})
    assert write_map(spool.engines, {32: "b" * 64, 1: "a" * 64}, {}) == folder  # the same map: the same entry
    assert members(folder) == {1: spool.engines / ("a" * 64), 32: spool.engines / ("b" * 64)}
    spool.switch("m", folder)
    keep, _ = protected_set(spool, StoreConfig())
    assert {folder.resolve(), (spool.engines / ("a" * 64)).resolve(), (spool.engines / ("b" * 64)).resolve()} <= keep
    assert engine_problem(folder) is None
    os.remove(str(spool.engines / ("b" * 64) / "model.onnx"))
    assert "it serves batch 32" in engine_problem(folder)


def test_rollback_from_and_to_a_serving_map_and_a_map_missing_an_engine_is_refused(tmp_path):
    from edgekit.device.errors import JobError
    from edgekit.device.jobs.context import Job
    from edgekit.device.jobs.rollback import roll_back

    spool = Spool(tmp_path / "root").ensure()
    for key in ("a" * 64, "b" * 64, "c" * 64):
        _engine(spool, key)
    folder = write_map(spool.engines, {1: "a" * 64, 32: "b" * 64}, {"serving": {"1": {}, "32": {}}})
    spool.switch("m", folder)
    spool.switch("m", spool.engines / ("c" * 64))
    job = Job(spool, "rb1")
    spool.job_dir("rb1").mkdir()
    report = roll_back(job, "m", None, "host")
    assert os.path.basename(report["current"]) == folder.name and report["serving"] == {"1": {}, "32": {}}
    assert os.path.basename(report["previous"]) == "c" * 64
    os.rename(str(spool.engines / ("a" * 64)), str(tmp_path / "gone"))
    spool.switch("m", spool.engines / ("c" * 64))
    with pytest.raises(JobError, match="no longer on this device"):
        roll_back(job, "m", folder.name, "host")
    assert os.path.basename(spool.current("m")) == "c" * 64  # nothing changed


# -- end to end: a push with precision auto says which engine serves each batch size ------------------------------
@pytest.mark.slow
def test_push_local_auto_says_which_engine_serves_each_batch_size_and_serves_the_fastest(project):
    from .conftest import run_cli

    config = project / "deploy.toml"
    root = project.parent / "home" / "local-device"
    config.write_text(config.read_text() + f'\n[devices.local]\nkind = "local"\nbackend = "auto"\n'
                                           f'precision = "auto"\nroot = "{root}"\n')
    result = run_cli("push", "local", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    serving, candidates = report["serving"], report["auto"]["candidates"]
    assert sorted(int(b) for b in serving) == [1, 8] and all(entry["reason"] for entry in serving.values())
    by_key = {c["engine_key"]: c for c in candidates if c.get("engine_key")}

    def median(candidate, batch):
        return statistics.median(candidate["round_medians_ms"] if batch == 8
                                 else candidate["other_batches"][str(batch)])

    valid = [c for c in candidates if c["passed"] and c["requested"]]
    for batch, entry in serving.items():
        served = by_key[entry["engine_key"]]
        assert served["passed"] and served["requested"]
        if len(valid) > 1:  # never slower than the fastest validated alternative beyond the noise margin
            fastest = min(median(c, int(batch)) for c in valid)
            assert median(served, int(batch)) <= fastest * (1 + NOISE_PERCENT / 100)
    # the baseline per batch size: the runtime fastest there for the unpruned model, named in each benchmark
    race = report["baseline"].get("race") or {}
    for bench in report["benchmarks"]:
        batch = str(bench["batch"])
        chosen = report["baselines"][batch]
        assert bench["baseline"]["label"] == chosen["label"]
        if len(race) > 1:
            at = {name: entry["median_ms"] if batch == "8" else entry["other_batches"][batch]
                  for name, entry in race.items()}
            assert at[chosen["backend"]] == min(at.values())
    from edgekit.host.records.report import latency_rows
    sizes = {entry["engine_key"]: entry["model_size_bytes"] for entry in serving.values()}
    for row in latency_rows(report, "local"):  # each row's size is that of the file serving its batch size
        assert row["model_bytes"] == (serving[str(row["batch"])]["model_size_bytes"] if len(sizes) > 1
                                      else report["model_size_bytes"])
    current = os.path.basename(Spool(root).current(report["model"]))
    assert report["engine_key"] == current
    keys = {entry["engine_key"] for entry in serving.values()}
    if len(keys) > 1:  # a serving map: current is the map and the benchmark ran each batch size on its engine
        assert current.startswith("serve-")
        assert {p.name for p in members(Spool(root).engines / current).values()} == keys
    else:
        assert current in keys
    shown = run_cli("report", cwd=project)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for batch, entry in serving.items():
        assert f"batch {batch} served by {entry['backend']}" in text


def test_the_report_shows_per_batch_size_the_engine_serving_it_and_why(tmp_path):
    from rich.console import Console

    from edgekit.host.records.plots import write_plots
    from edgekit.host.records.report import latency_rows, print_report, summary_lines

    def bench(batch, final, strict_label):
        return {"batch": batch, "iterations": 5, "images_per_s": batch * 1000 / final, "samples_ms": [final] * 5,
                "latency_ms": {"median": final, "p90": final, "p99": final, "cv_percent": 1.0},
                "speedup": 4 * batch / final, "speedup_fp32": 8 * batch / final,
                "baseline": {"latency_ms": {"median": 4.0 * batch}, "samples_ms": [4.0 * batch] * 5},
                "baseline_fp32": {"latency_ms": {"median": 8.0 * batch}, "label": strict_label}}

    serving = {"1": {"backend": "onnxruntime", "precision": "int8", "model_file": "model.int8.cpu.onnx",
                     "engine_key": "a" * 64, "model_size_bytes": 1_150_000,
                     "validation": {"passed": True, "top1_agreement": 1.0, "cosine_min": 0.9990},
                     "reason": "onnxruntime int8 (model.int8.cpu.onnx): the fastest at batch 1"},
               "32": {"backend": "openvino", "precision": "fp16", "executed_precision": "bf16",
                      "model_file": "model.onnx", "engine_key": "b" * 64, "model_size_bytes": 4_320_000,
                      "validation": {"passed": True, "top1_agreement": 0.97, "cosine_min": 0.9950},
                      "reason": "openvino bf16 (model.onnx): the fastest at batch 32"}}
    report = {"job": "j", "status": "done", "model": "m", "backend": "onnxruntime", "precision": "int8",
              "precision_requested": "auto", "model_file": "model.int8.cpu.onnx", "serving": serving,
              "benchmarks": [bench(1, 1.0, "unpruned strict FP32 on onnxruntime"),
                             bench(32, 16.0, "unpruned strict FP32 on openvino")],
              "validation": {"passed": True, "top1_agreement": 1.0, "cosine_min": 1.0},
              "baseline": {"model_file": "model.baseline.onnx", "label": "unpruned bf16 on openvino"},
              "baseline_fp32": {"label": "unpruned strict FP32 on onnxruntime"},
              "auto": {"message": "auto serves batch 1 with onnxruntime int8, batch 32 with openvino bf16",
                       "runtime_auto": True, "candidates": []},
              "host": {"accuracy_by_file": {"model.int8.cpu.onnx": 0.98, "model.onnx": 0.985,
                                            "model.baseline.onnx": 0.99}}}
    rows = latency_rows(report, "local")
    assert [(r["backend"], r["precision_shown"]) for r in rows] == [
        ("onnxruntime (auto)", "int8 (auto)"), ("openvino (auto)", "fp16 (bf16) (auto)")]
    # size, validation and host top-1 describe the file serving each batch size, not batch 1's
    assert [(r["model_file"], r["model_bytes"], r["top1_agreement"], r["host_top1"]) for r in rows] == [
        ("model.int8.cpu.onnx", 1_150_000, 1.0, 0.98), ("model.onnx", 4_320_000, 0.97, 0.985)]
    lines = summary_lines(report)
    assert lines[0] == ("device validation of model.int8.cpu.onnx on onnxruntime (serves batch 1, 1.15 MB): passed "
                        "(top-1 agreement 100.0% with the host's outputs, worst cosine 0.9990)")
    assert lines[1] == ("device validation of model.onnx on openvino (serves batch 32, 4.32 MB): passed (top-1 "
                        "agreement 97.0% with the host's outputs, worst cosine 0.9950)")
    lines = lines[1:]
    assert "final model (batch 1: int8 (auto) on onnxruntime, batch 32: fp16 (bf16) (auto) on openvino)" in lines[1]
    assert "(of model.int8.cpu.onnx, batch 1's file)" in lines[1]
    assert "8.00× at batch 1 (unpruned strict FP32 on onnxruntime), 16.00× at batch 32 (unpruned strict FP32 on " \
           "openvino)" in lines[2]
    console = Console(record=True, width=300)
    print_report(console, report, "local")
    text = console.export_text()
    assert "batch 1 served by onnxruntime int8 (model.int8.cpu.onnx): the fastest at batch 1" in text
    assert "batch 32 served by openvino bf16 (model.onnx): the fastest at batch 32" in text
    assert len(write_plots(dict(report, device="local"), tmp_path)) == 2
