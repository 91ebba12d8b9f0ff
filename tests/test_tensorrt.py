"""TensorRT backend: every decision tested here; the builds themselves run wherever TensorRT imports."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from edgekit.calibration.table import CalibrationTable, TensorRange, parse_trt_cache, trt_cache
from edgekit.device.backends.tensorrt.jetson import (
    clocks_locked,
    devfreq_gpu,
    hwmon_power,
    jetpack_for,
    jetson_facts,
    l4t_release,
    nvpmodel_mode,
    parse_tegrastats,
    summarize_power,
    thermal_throttling,
)
from edgekit.device.backends.tensorrt.plan import (
    PlanError,
    TrtVersion,
    describe_parser_error,
    engine_identity,
    plan_build,
    profile_shapes,
    restamp_cache,
)
from edgekit.device.jobs.engines import build_options, engine_key

FIXTURES = Path(__file__).parent / "fixtures" / "tegrastats"
BASE = {"precision": "fp32", "batch_sizes": [1, 32], "input_name": "input", "input_shape": [3, 32, 32]}


def fixture_line(name: str) -> str:
    return next(line for line in (FIXTURES / name).read_text().splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("text, stamp", [("8.5.2.2", "8502"), ("8.6.1", "8601"), ("10.3.0", "100300"),
                                         ("10.7.0.23", "100700")])
def test_calibration_cache_stamps_follow_nv_tensorrt_version(text, stamp):
    assert TrtVersion.parse(text).cache_stamp == stamp


def test_version_capabilities():
    v85, v86, v103, v11 = (TrtVersion.parse(v) for v in ("8.5.2", "8.6.1", "10.3.0", "11.0.0"))
    assert v85.explicit_batch_flag and not v103.explicit_batch_flag
    assert not v85.optimization_level and v86.optimization_level
    assert not v86.progress_monitor and v103.progress_monitor
    assert v103.implicit_int8 and v103.implicit_int8_deprecated and not v11.implicit_int8


def test_options_become_builder_settings_per_version():
    v85, v103 = TrtVersion.parse("8.5.2"), TrtVersion.parse("10.3.0")
    fp32 = plan_build(BASE, v85)
    assert fp32.flags == () and fp32.model_file == "model.onnx" and fp32.network_flags == ("EXPLICIT_BATCH",)
    assert fp32.profile == ("input", (1, 3, 32, 32), (32, 3, 32, 32), (32, 3, 32, 32))
    assert fp32.workspace_bytes == 1024 << 20
    assert plan_build(dict(BASE, precision="fp16"), v103).flags == ("FP16",)
    explicit = plan_build(dict(BASE, precision="int8"), v103)
    assert explicit.model_file == "model.int8.qdq.onnx" and explicit.flags == ("INT8", "FP16")
    assert not explicit.use_calibration_cache and explicit.progress_monitor
    implicit = plan_build(dict(BASE, precision="int8", int8_mode="implicit"), v103)
    assert implicit.model_file == "model.onnx" and implicit.use_calibration_cache
    assert "deprecated" in implicit.warnings[0]
    with pytest.raises(PlanError, match="removed in 11"):
        plan_build(dict(BASE, precision="int8", int8_mode="implicit"), TrtVersion.parse("11.0"))
    old = plan_build(dict(BASE, builder_optimization_level=5), v85)
    assert old.optimization_level is None and "8.6+" in old.warnings[0]
    assert plan_build(dict(BASE, builder_optimization_level=5), v103).optimization_level == 5


def test_dla_settings_are_checked_against_the_device():
    v = TrtVersion.parse("8.5.2")
    one = dict(BASE, batch_sizes=[8])  # DLA: static shapes only
    dla = plan_build(dict(one, precision="fp16", dla_core=1), v, dla_cores=2)
    assert dla.dla_core == 1 and "GPU_FALLBACK" in dla.flags
    with pytest.raises(PlanError, match="no DLA cores"):
        plan_build(dict(one, precision="fp16", dla_core=0), v, dla_cores=0)
    with pytest.raises(PlanError, match="DLA cores 0..1"):
        plan_build(dict(one, precision="fp16", dla_core=2), v, dla_cores=2)
    with pytest.raises(PlanError, match="FP16 or INT8 only"):
        plan_build(dict(one, dla_core=0), v, dla_cores=2)


def test_host_cache_is_restamped_for_the_device_and_keeps_every_scale():
    table = CalibrationTable("entropy", 512, {"input": TensorRange(2.5, -1, 2.5), "/conv1/Conv_output_0":
                                              TensorRange(3.75, -3, 3.75)})
    host = trt_cache(table, "8601")
    device = restamp_cache(host, TrtVersion.parse("10.3.0"))
    assert device.splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert parse_trt_cache(device)[1] == parse_trt_cache(host)[1]
    with pytest.raises(PlanError, match="header"):
        restamp_cache("input: 3c010a14\n", TrtVersion.parse("8.6.1"))


def test_parser_errors_name_the_node_and_op():
    graph = [["/conv1/Conv", "Conv"], ["/weird/Op", "CustomOp"]]
    assert describe_parser_error(0, "unsupported op", 1, graph) == "node 1 (/weird/Op, op CustomOp): unsupported op"
    assert describe_parser_error(0, "bad", 7, None, "/x", "Foo") == "node 7 (/x, op Foo): bad"
    assert describe_parser_error(0, "no graph", -1, None) == "the model: no graph"


def test_engine_cache_key_separates_versions_gpus_and_dla_cores():
    files = {"model.onnx": "a" * 64}
    options = build_options("int8", [1, 32], {"int8_mode": "explicit"})
    orin = engine_identity(TrtVersion.parse("10.3.0"), "Orin", (8, 7), None, 12060)
    keys = {
        engine_key(files, orin, options),
        engine_key(files, engine_identity(TrtVersion.parse("8.6.1"), "Orin", (8, 7), None, 12060), options),
        engine_key(files, engine_identity(TrtVersion.parse("10.3.0"), "Xavier", (7, 2), None, 12060), options),
        engine_key(files, orin, build_options("int8", [1, 32], {"int8_mode": "explicit", "dla_core": 0})),
        engine_key(files, orin, build_options("fp16", [1, 32], {})),
        engine_key(files, orin, build_options("int8", [1, 64], {"int8_mode": "explicit"})),
    }
    assert len(keys) == 6


def test_profile_shapes_cover_every_batch_size():
    assert profile_shapes("x", [3, 224, 224], [8, 1, 4]) == ("x", (1, 3, 224, 224), (8, 3, 224, 224),
                                                            (8, 3, 224, 224))


# -- tegrastats fixtures ------------------------------------------------------------------------
def test_every_tegrastats_fixture_is_a_captured_line_with_its_source():
    for path in sorted(FIXTURES.glob("*.txt")):
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert any(line.startswith("# source: https://") for line in header), path.name
        assert any(line.startswith("# captured:") for line in header), path.name


def test_tegrastats_tx2_jetpack4():
    stats = parse_tegrastats(fixture_line("tx2_jetpack4.txt"))
    assert stats["ram_mb"] == {"used": 2020, "total": 7852} and len(stats["cpu"]) == 6
    assert stats["cpu"][1] == {"load": 21, "mhz": 345} and stats["gr3d"] == {"load_percent": 0}
    assert stats["temperatures_c"]["pmic"] == 100.0 and stats["temperatures_c"]["tdiode"] == 41.25
    assert stats["power_mw"]["VDD_IN"] == {"mw": 3140, "avg_mw": 3208} and stats["input_power_mw"] == 3140
    assert len(stats["power_mw"]) == 6


def test_tegrastats_agx_xavier_has_no_invented_total():
    stats = parse_tegrastats(fixture_line("agx_xavier_jetpack4.txt"))
    assert stats["power_mw"]["SOC"] == {"mw": 2936, "avg_mw": 2936} and stats["input_power_mw"] is None
    assert stats["temperatures_c"]["thermal"] == 30.8 and len(stats["cpu"]) == 8


def test_tegrastats_orin_nano_jetpack6():
    stats = parse_tegrastats(fixture_line("orin_nano_jetpack6.txt"))
    assert stats["gr3d"] == {"load_percent": 84, "mhz": 713} and stats["emc"] == {"load_percent": 18, "mhz": 3199}
    assert stats["input_power_mw"] == 17946 and stats["power_mw"]["VDD_SOC"]["avg_mw"] == 3515
    assert stats["temperatures_c"]["soc2"] == 64.156 and stats["cpu"][5] == {"load": 93, "mhz": 247}
    summary = summarize_power([stats, parse_tegrastats(fixture_line("orin_nano_jetpack6.txt").replace(
        "VDD_IN 17946", "VDD_IN 17954"))])
    assert summary["input_mean_mw"] == 17950 and summary["samples"] == 2


def test_tegrastats_agx_orin_jetpack7_r39():
    stats = parse_tegrastats(fixture_line("agx_orin_jetpack7_r39.txt"))
    assert stats["gr3d"] == {"load_percent": 0, "mhz": 1300} and stats["temperatures_c"] == {"cpu": 52.968}
    assert "power_mw" not in stats  # the published line elides its rails: none is invented


def test_tegrastats_original_nano_jetpack4_r32():
    busy = parse_tegrastats(fixture_line("nano_jetpack4_r32.txt"))
    assert busy["gr3d"] == {"load_percent": 99, "mhz": 921} and busy["emc"] == {"load_percent": 9, "mhz": 1600}
    assert busy["power_mw"] == {"POM_5V_IN": {"mw": 4523, "avg_mw": 3422}, "POM_5V_GPU": {"mw": 1113, "avg_mw": 313},
                                "POM_5V_CPU": {"mw": 538, "avg_mw": 701}}
    assert busy["input_power_mw"] == 4523  # POM_5V_IN is the module input: GPU and CPU are inside it
    assert busy["temperatures_c"]["gpu"] == 43.0 and busy["ram_mb"] == {"used": 1504, "total": 3956}
    idle = parse_tegrastats(fixture_line("nano_jetpack4_r32_idle.txt"))
    assert idle["gr3d"] == {"load_percent": 0, "mhz": 76} and idle["temperatures_c"]["iwlwifi"] == 33.0
    assert set(idle["power_mw"]) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}  # IRAM 0/252kB is no rail
    summary = summarize_power([busy, idle])
    assert summary["input_mean_mw"] == (4523 + 1057) / 2


def test_tegrastats_agx_orin_jetpack5_r35():
    stats = parse_tegrastats(fixture_line("agx_orin_jetpack5_r35.txt"))
    assert stats["power_mw"] == {"VDD_GPU_SOC": {"mw": 2340, "avg_mw": 2340}, "VDD_CPU_CV": {"mw": 390, "avg_mw": 390},
                                 "VIN_SYS_5V0": {"mw": 4025, "avg_mw": 4025},
                                 "VDDQ_VDD2_1V8AO": {"mw": 301, "avg_mw": 301}}  # the NC placeholders dropped
    assert stats["input_power_mw"] is None  # VIN_SYS_5V0 is the 5 V I/O rail, not the module's input
    assert stats["gr3d"] == {"load_percent": 0, "mhz": 0} and stats["emc"] == {"load_percent": 0, "mhz": 2133}
    assert stats["vic"] == {"mhz": 729}  # a bare clock, no load
    assert stats["temperatures_c"] == {"cpu": 44.562, "tboard": 32.0, "soc2": 40.093, "tdiode": 33.0,
                                       "soc0": 41.093, "tj": 44.343, "soc1": 41.25}  # CV0/CV1/CV2/GPU at -256C
    assert len(stats["cpu"]) == 12 and stats["ram_mb"]["total"] == 62801


@pytest.mark.parametrize("l4t, jetpack", [("32.1.0", "4.2"), ("32.7.4", "4.6.x"), ("35.4.1", "5.1.2"),
                                          ("36.4.4", "6.1/6.2.x"), ("39.2.0", "7.2")])
def test_jetpack_table_covers_r32_to_r39(l4t, jetpack):
    assert jetpack_for(l4t) == jetpack


# -- Jetson detection from fixture trees ----------------------------------------------------------
def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_jetson_detection_from_files(tmp_path):
    write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    write(tmp_path, "etc/nv_tegra_release", "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    facts = jetson_facts(tmp_path)
    assert facts["model"] == "NVIDIA Jetson AGX Orin Developer Kit" and facts["l4t"] == "35.4.1"
    assert facts["jetpack"] == "5.1.2" and facts["nvpmodel"] is None and "nvpmodel" in facts["missing"]
    assert l4t_release("# R36 (release), REVISION: 4.3, GCID: 1") == "36.4.3"
    assert nvpmodel_mode("NV Power Mode: MAXN\n0\n") == "MAXN"
    assert jetson_facts(tmp_path / "nowhere") == {"jetson": False}


def test_clocks_throttling_and_rails_from_sysfs(tmp_path):
    gpu = "sys/class/devfreq/17000000.ga10b/"
    write(tmp_path, gpu + "cur_freq", "1300500000")
    write(tmp_path, gpu + "min_freq", "1300500000")
    write(tmp_path, gpu + "max_freq", "1300500000")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq", "2201600")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq", "2201600")
    clock = devfreq_gpu(tmp_path)
    assert clock["cur_mhz"] == pytest.approx(1300.5) and clocks_locked(tmp_path, clock) is True
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "99000")
    write(tmp_path, "sys/class/thermal/thermal_zone0/trip_point_0_type", "passive")
    write(tmp_path, "sys/class/thermal/thermal_zone0/trip_point_0_temp", "95500")
    assert thermal_throttling(tmp_path) is True
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "50000")
    assert thermal_throttling(tmp_path) is False
    hw = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/"
    write(tmp_path, hw + "in1_label", "VDD_IN")
    write(tmp_path, hw + "in1_input", "5000")
    write(tmp_path, hw + "curr1_input", "1200")
    assert hwmon_power(tmp_path) == {"VDD_IN": 6000.0}
    assert thermal_throttling(tmp_path / "none") is None and hwmon_power(tmp_path / "none") is None


# -- the agent without TensorRT: clear failure or declared fallback, never a made-up figure --------
@pytest.mark.slow
def test_tensorrt_job_fails_clearly_or_falls_back_when_tensorrt_is_missing(project):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the missing-TensorRT path cannot be exercised")
    except ImportError:
        pass
    from .conftest import run_cli

    config = project / "deploy.toml"
    root = project.parent / "home" / "local-device"
    base = config.read_text()
    config.write_text(base + f'\n[devices.local]\nkind = "local"\nbackend = "tensorrt"\nroot = "{root}"\n')
    failed = run_cli("push", "local", "--json", cwd=project)
    assert failed.returncode == 1 and "backend tensorrt is not available" in failed.stderr
    assert "TensorRT Python bindings are not installed" in failed.stderr
    config.write_text(base + f'\n[devices.local]\nkind = "local"\nbackend = "tensorrt"\nallow_fallback = true\n'
                             f'root = "{root}"\n')
    fallback = run_cli("push", "local", "--json", cwd=project)
    assert fallback.returncode == 0, fallback.stderr
    report = json.loads(fallback.stdout)["report"]
    assert report["backend"] == "onnxruntime" and "fell back to onnxruntime" in report["fallback"]
    assert all("TensorRT" not in str(b.get("source", "")) for b in report["benchmarks"])
    assert json.loads(fallback.stdout)["rows"][0]["backend"] == "onnxruntime (fallback)"


# -- real TensorRT: run wherever it imports ----------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed on this machine")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_builds_runs_and_validates_resnet20(project, precision):
    from .conftest import run_cli

    config = project / "deploy.toml"
    root = project.parent / "home" / "local-device"
    config.write_text(config.read_text() + f'\n[devices.local]\nkind = "local"\nbackend = "tensorrt"\n'
                                           f'precision = "{precision}"\nroot = "{root}"\n')
    result = run_cli("push", "local", "--json", cwd=project, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["backend"] == "tensorrt" and report["validation"]["passed"]
    bench = report["benchmarks"][0]
    assert bench["source"].startswith("TensorRT") and bench["gpu_compute_ms"]["median"] > 0
