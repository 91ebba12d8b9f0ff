"""trtexec cross-check: the parser on real trtexec output, the command per version, the 5 % flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgekit.device.backends.tensorrt.plan import TrtVersion
from edgekit.device.backends.tensorrt.trtexec import command, compare, cross_check, parse_summary
from edgekit.device.benchmark import Plan

SAMPLES = Path(__file__).parent / "fixtures" / "trtexec"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_parses_trtexec_84_summary():
    summary = parse_summary(sample("trt8401_rtx3070_yolov7.txt"))
    assert summary["qps"] == 1004.27 and summary["wall_s"] == 3.0022
    assert summary["gpu_compute_ms"] == {"min": 0.965637, "max": 4.24448, "mean": 0.993252, "median": 0.97998,
                                         "p99": 1.29016}
    assert summary["latency_ms"]["median"] == 1.1897 and summary["h2d_ms"]["median"] == 0.200623
    assert summary["enqueue_ms"]["p99"] == 0.387817 and summary["d2h_ms"]["max"] == 0.0202637


def test_parses_percentiles_90_95_99():
    summary = parse_summary(sample("trt86_deepstream_p90_p95_p99.txt"))
    latency = summary["latency_ms"]
    assert (latency["median"], latency["p90"], latency["p95"], latency["p99"]) == (42.4526, 45.2621, 47.5834, 48.812)
    assert summary["gpu_compute_ms"]["median"] == 40.3651


def test_end_to_end_host_latency_is_not_taken_for_latency():
    summary = parse_summary(sample("trt7_end_to_end_host_latency.txt"))
    assert summary["latency_ms"]["median"] == 0.163818 and summary["h2d_ms"]["max"] == 0
    with pytest.raises(ValueError, match="no trtexec performance summary"):
        parse_summary("&&&& FAILED TensorRT.trtexec\n")


def test_command_spells_our_settings_for_each_tensorrt():
    plan = Plan(warmup_s=0.2, duration_s=3.0, min_iterations=10)
    old = command("trtexec", Path("e.plan"), "input", (8, 3, 32, 32), plan, True, None, 10)
    assert old[1:] == ["--loadEngine=e.plan", "--shapes=input:8x3x32x32", "--warmUp=200", "--duration=3",
                       "--iterations=10", "--useCudaGraph"]
    new = command("trtexec", Path("e.plan"), "input", (8, 3, 32, 32), plan, False, 1, 11)
    assert new[-3:] == ["--includeDataTransfers", "--noCudaGraph", "--useDLACore=1"]


def test_difference_above_five_percent_is_flagged():
    theirs = parse_summary(sample("trt8401_rtx3070_yolov7.txt"))
    ours = {"gpu_compute_ms": {"median": 0.97998 * 1.03}, "latency_ms": {"median": 1.1897 * 1.08}}
    result = compare(ours, theirs)
    assert not result["agrees"] and len(result["flagged"]) == 1 and "latency_ms" in result["flagged"][0]
    assert result["medians"]["gpu_compute_ms"]["difference_percent"] == pytest.approx(3.0)


def test_a_missing_trtexec_is_reported_not_invented(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = cross_check(Path("e.plan"), "input", (1, 3, 32, 32), Plan(), False, None, TrtVersion.parse("10.3"), {})
    if os.path.exists("/usr/src/tensorrt/bin/trtexec"):
        pytest.skip("JetPack's trtexec is installed here")
    assert result == {"ran": False, "reason": "trtexec not found (on PATH or /usr/src/tensorrt/bin/trtexec)"}
