"""Pure device-side logic: manifest checks, statistics, validation verdicts, unit text, engine keys."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.device.contract.manifest import ManifestError, canonical_bytes, load_manifest_bytes, parse_manifest
from edgekit.device.contract.protocol import parse_event_chunk
from edgekit.device.contract.service import parse_exec_start, unit_text
from edgekit.device.contract.validate import compare
from edgekit.device.jobs.engines import build_options, engine_key
from edgekit.device.stats import percentile, summarize, throughput

SHA = "a" * 64


def manifest(**changes):
    data = {"schema_version": 1, "model": "m", "input": {"name": "input", "shape": [3, 32, 32], "batch_sizes": [1, 8]},
            "target": {"backend": "onnxruntime", "precision": "fp32"},
            "files": [{"name": "model.onnx", "sha256": SHA, "size": 10},
                      {"name": "reference.npz", "sha256": "b" * 64, "size": 5}]}
    data.update(changes)
    return data


def test_manifest_round_trip_through_canonical_bytes():
    parsed = load_manifest_bytes(canonical_bytes(manifest()))
    assert parsed.model == "m" and parsed.batch_sizes == [1, 8] and parsed.backend == "onnxruntime"


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/b", ".hidden", "..", "manifest.sig", ""])
def test_file_names_that_could_escape_the_job_directory_are_refused(name):
    bad = manifest(files=[{"name": name, "sha256": SHA, "size": 1}])
    with pytest.raises(ManifestError, match="not allowed"):
        parse_manifest(bad)


@pytest.mark.parametrize("change, words", [
    ({"schema_version": 99}, "schema_version 99"),
    ({"input": {"name": "x", "shape": [3, 32], "batch_sizes": [1]}}, "three positive integers"),
    ({"target": {"backend": "onnxruntime", "precision": "int4"}}, "precision 'int4'"),
    ({"files": [{"name": "model.onnx", "sha256": "xyz", "size": 1}]}, "64 lowercase hex"),
])
def test_malformed_manifests_name_the_field(change, words):
    with pytest.raises(ManifestError, match=words):
        parse_manifest(manifest(**change))


def test_percentiles_and_median_follow_trtexec():
    values = list(range(1, 101))  # 1..100 ms
    # float32 like trtexec: (1 - 0.99f) * 100 = 0.99999 -> nothing excluded -> the maximum
    assert percentile(values, 50) == 50 and percentile(values, 99) == 100 and percentile(values, 100) == 100
    assert percentile(list(range(1, 11)), 90) == 9  # (1 - 0.9f) * 10 = 1.0000002 -> one excluded
    stats = summarize(values)
    assert stats["min"] == 1 and stats["max"] == 100 and stats["median"] == 50.5 and stats["p90"] == 90
    assert summarize([3, 1, 2])["median"] == 2
    assert stats["cv_percent"] == pytest.approx(np.std(values) / np.mean(values) * 100)
    assert throughput(32, 100, 2.0) == {"qps": 50.0, "images_per_s": 1600.0}


def test_validation_passes_identical_outputs_and_fails_flipped_predictions():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 10)).astype(np.float32)
    labels = reference.argmax(1)
    assert compare(reference, reference + 1e-6, labels, "fp32", {})["passed"]
    flipped = reference.copy()
    flipped[:10] = -flipped[:10]
    verdict = compare(reference, flipped, labels, "fp32", {})
    assert not verdict["passed"] and "top-1 agreement" in verdict["reason"]
    assert compare(reference, flipped, labels, "fp32", {"min_top1_agreement": 0.5, "min_cosine": -2})["passed"]


def test_systemd_unit_does_not_restart_on_config_errors_and_runs_as_the_user():
    text = unit_text("/opt/venv/bin/edgekit-agent", "/home/nvidia/.edgekit", "nvidia", system=True)
    assert "Restart=on-failure" in text and "RestartPreventExitStatus=2" in text and "User=nvidia" in text
    assert parse_exec_start(text) == ["/opt/venv/bin/edgekit-agent", "serve", "--root", "/home/nvidia/.edgekit"]
    assert "User=" not in unit_text("/a/edgekit-agent", "/r", "nvidia", system=False)


def test_engine_key_changes_with_anything_that_makes_an_engine_unportable():
    files = {"model.onnx": SHA}
    options = build_options("fp32", [8, 1], {"allow_fallback": True})
    base = engine_key(files, {"version": "1.0", "cpu": "x"}, options)
    assert options["batch_sizes"] == [1, 8] and "allow_fallback" not in options
    assert base == engine_key(dict(files), {"cpu": "x", "version": "1.0"}, dict(options))
    assert base != engine_key(files, {"version": "1.1", "cpu": "x"}, options)
    assert base != engine_key(files, {"version": "1.0", "cpu": "y"}, options)
    assert base != engine_key(files, {"version": "1.0", "cpu": "x"}, build_options("int8", [1, 8], {}))
    assert base != engine_key({"model.onnx": "c" * 64}, {"version": "1.0", "cpu": "x"}, options)


def test_partial_event_lines_wait_for_the_next_read():
    events, offset = parse_event_chunk(b'{"kind": "a", "message": "x"}\n{"kind": "b"', 10)
    assert [e["kind"] for e in events] == ["a"] and offset == 10 + 30
