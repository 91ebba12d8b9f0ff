"""CPU runtimes: the CPU's ISA, the one place choosing model files, ``auto``'s choice, the OpenVINO backend
(real OpenVINO on a real trained model), and the agent without OpenVINO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.device.agent.spool import Spool
from edgekit.device.contract.manifest import (
    CALIBRATION_CACHE,
    MODEL_FP32,
    MODEL_INT8_CPU,
    MODEL_INT8_CPU_AVX2,
    MODEL_INT8_QDQ,
    REFERENCE,
)
from edgekit.device.contract.model_files import ModelChoiceError, candidates, model_file, needed_files, unused_files
from edgekit.device.cpu import cpu_flags, describe_cpu, summarize_isa
from edgekit.device.jobs.auto import Candidate, choose, interleave

from .conftest import run_cli

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx_vnni\n"
HASWELL = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2680 v3\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
ORIN = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"
VNNI = summarize_isa("x86_64", cpu_flags(EPYC))
AVX2 = summarize_isa("x86_64", cpu_flags(HASWELL))
ARM = summarize_isa("aarch64", cpu_flags(ORIN))
VARIANTS = {MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ}
ALL_FILES = [MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ, "calibration.json", CALIBRATION_CACHE,
             REFERENCE, "model.baseline.onnx"]


# -- the CPU's ISA -----------------------------------------------------------------------------------
def test_isa_says_where_u8s8_can_saturate():
    assert VNNI["family"] == "x86" and not VNNI["u8s8_saturates"] and "avx512_vnni" in VNNI["int8_dot"]
    assert AVX2["u8s8_saturates"] and AVX2["int8_dot"] == [] and "avx2" in AVX2["isa"]
    assert ARM["family"] == "arm" and not ARM["u8s8_saturates"] and ARM["isa"] == ["asimd", "asimddp"]
    described = describe_cpu(HASWELL, "x86_64")
    assert described["model"].startswith("Intel(R) Xeon(R)") and described["flags_read"]


# -- the one place choosing model files ----------------------------------------------------------------
@pytest.mark.parametrize("backend, precision, mode, cpu, expected", [
    ("onnxruntime", "fp32", "explicit", VNNI, MODEL_FP32),
    ("openvino", "fp32", "explicit", AVX2, MODEL_FP32),
    ("onnxruntime", "int8", "explicit", VNNI, MODEL_INT8_CPU),
    ("openvino", "int8", "explicit", ARM, MODEL_INT8_CPU),
    ("onnxruntime", "int8", "explicit", AVX2, MODEL_INT8_CPU_AVX2),  # U8S8 may saturate without VNNI: 7-bit
    ("openvino", "int8", "explicit", AVX2, MODEL_INT8_CPU_AVX2),
    ("onnxruntime", "int8", "explicit", None, MODEL_INT8_CPU_AVX2),  # unknown CPU: the safe form
    ("tensorrt", "int8", "explicit", VNNI, MODEL_INT8_QDQ),
    ("tensorrt", "int8", "implicit", VNNI, MODEL_FP32),
    ("tensorrt", "fp16", "explicit", None, MODEL_FP32),
])
def test_model_file_per_backend_precision_and_isa(backend, precision, mode, cpu, expected):
    assert model_file(backend, precision, mode, cpu) == expected


def test_fp16_off_tensorrt_and_openvino_and_auto_as_a_backend_are_refused():
    with pytest.raises(ModelChoiceError, match="fp16 needs the openvino or tensorrt backend"):
        model_file("onnxruntime", "fp16")
    assert model_file("openvino", "fp16") == MODEL_FP32  # OpenVINO's default precision (bf16/f16) from the FP32 file
    with pytest.raises(ModelChoiceError, match="auto is not a backend"):
        model_file("auto", "fp32")
    with pytest.raises(ModelChoiceError, match="auto is not a precision"):
        model_file("openvino", "auto")


def test_auto_candidates_are_the_cpu_runtimes_present_or_tensorrt():
    assert candidates("auto", ["onnxruntime", "openvino"]) == ["openvino", "onnxruntime"]
    assert candidates("auto", ["onnxruntime"]) == ["onnxruntime"]
    assert candidates("auto", ["onnxruntime", "openvino", "tensorrt"]) == ["tensorrt"]
    assert candidates("auto", []) == [] and candidates("openvino", []) == ["openvino"]


def test_only_the_files_a_backend_reads_are_shipped_the_rest_stays():
    assert needed_files(["openvino", "onnxruntime"], "int8", cpu=VNNI) == [MODEL_INT8_CPU]
    # an explicit precision keeps the other precisions' files: the device measures them to advise
    assert unused_files(ALL_FILES, ["openvino", "onnxruntime"], "int8", cpu=VNNI) == [
        CALIBRATION_CACHE, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ]
    assert needed_files(["tensorrt"], "int8", "implicit") == [CALIBRATION_CACHE, MODEL_FP32]
    kept = set(ALL_FILES) - set(unused_files(ALL_FILES, ["onnxruntime"], "fp32", cpu=AVX2))
    assert kept == {MODEL_FP32, MODEL_INT8_CPU_AVX2, "calibration.json", REFERENCE, "model.baseline.onnx"}
    assert needed_files(["openvino", "onnxruntime"], "auto", cpu=VNNI) == [MODEL_INT8_CPU, MODEL_FP32]
    assert needed_files(["tensorrt"], "auto") == [MODEL_INT8_QDQ, MODEL_FP32]


def test_host_picks_files_from_what_the_device_reports(tmp_path):
    from edgekit.host.config import DeviceSection
    from edgekit.host.errors import ConfigError
    from edgekit.host.ship.bundle import files_for_device

    files = {name: tmp_path / name for name in ALL_FILES}
    config = SimpleNamespace(path=Path("deploy.toml"))
    device = DeviceSection(kind="local", precision="int8")  # backend defaults to auto
    both = {"backends": {"onnxruntime": {"available": True}, "openvino": {"available": True},
                         "tensorrt": {"available": False}}}
    assert MODEL_INT8_CPU in files_for_device(config, device, files, dict(both, cpu=VNNI))
    on_avx2 = files_for_device(config, device, files, dict(both, cpu=AVX2))
    assert MODEL_INT8_CPU_AVX2 in on_avx2 and MODEL_INT8_CPU not in on_avx2 and MODEL_INT8_QDQ not in on_avx2
    unknown = files_for_device(config, device, files, None)  # no status: both INT8 forms travel
    assert {MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_FP32} <= set(unknown)  # FP32: measured to advise
    with pytest.raises(ConfigError, match="model.int8"):
        files_for_device(config, device, {MODEL_FP32: files[MODEL_FP32]}, dict(both, cpu=VNNI))
    with pytest.raises(ConfigError, match="fp16 needs the openvino or tensorrt backend"):
        files_for_device(config, DeviceSection(kind="local", backend="onnxruntime", precision="fp16"), files,
                         dict(both, cpu=VNNI))
    # under auto, the runtime that has it runs it (OpenVINO's default precision)
    assert MODEL_FP32 in files_for_device(config, DeviceSection(kind="local", precision="fp16"), files,
                                          dict(both, cpu=VNNI))


# -- auto's choice -----------------------------------------------------------------------------------
def test_auto_picks_the_fastest_validated_runtime_and_says_by_how_much():
    ov = Candidate("openvino", MODEL_INT8_CPU, True, round_medians_ms=[10.0, 11.0, 10.5])
    ort = Candidate("onnxruntime", MODEL_INT8_CPU, True, round_medians_ms=[16.0, 15.0, 15.5])
    choice = choose([ov, ort], 32)
    assert choice.winner == "openvino" and choice.runner_up == "onnxruntime"
    assert choice.speedup == pytest.approx(15.5 / 10.5)
    assert "1.48× faster than onnxruntime at batch 32" in choice.message and "noise" not in choice.message
    broken = Candidate("openvino", MODEL_INT8_CPU, False, "validation failed: cosine 0.5 < 0.99", [1.0, 1.0])
    alone = choose([broken, ort], 32)
    assert alone.winner == "onnxruntime" and alone.speedup is None and "only runtime that passed" in alone.message
    close = choose([Candidate("openvino", "", True, round_medians_ms=[10.2]),
                    Candidate("onnxruntime", "", True, round_medians_ms=[10.0])], 1)
    assert close.winner == "onnxruntime" and "within noise" in close.message
    with pytest.raises(ValueError, match="no runtime passed validation"):
        choose([broken, Candidate("onnxruntime", reason="RuntimeError: no kernel")], 32)


def test_auto_weighs_every_batch_size_and_a_crossing_goes_to_the_primary_batch_size():
    """OpenVINO 1.5× faster at batch 32 but 2.4× slower at batch 1 (ResNet-20 ×4, measured): neither is the fastest
    at every size, so the primary batch size (the smallest) decides, and the reason names the other's win."""
    ov = Candidate("openvino", MODEL_INT8_CPU, True, round_medians_ms=[10.0, 10.2], other_batches={1: [4.0, 4.1]})
    ort = Candidate("onnxruntime", MODEL_INT8_CPU, True, round_medians_ms=[15.0, 15.3], other_batches={1: [1.65, 1.6]})
    choice = choose([ov, ort], 32, primary=1)
    assert choice.winner == "onnxruntime" and choice.primary == 1 and choice.crossed == {32: "openvino"}
    assert choice.speedup == pytest.approx(4.05 / 1.625)
    assert "the fastest at batch 1, the primary batch size" in choice.message
    assert "openvino would have won at batch 32 by 1.50×" in choice.message
    assert choose([ort, ov], 32, primary=1).winner == "onnxruntime"
    at_32 = choose([ov, ort], 32)  # primary defaults to the batch of round_medians_ms
    assert at_32.winner == "openvino" and "onnxruntime would have won at batch 1 by 2.49×" in at_32.message


def test_interleave_alternates_candidates_within_each_round():
    calls, now = [], [0.0]

    def runner(name, cost):
        def run():
            calls.append(name)
            now[0] += cost
        return run

    medians = interleave({"a": runner("a", 0.002), "b": runner("b", 0.004)}, rounds=3, round_s=0.005,
                         clock=lambda: now[0], sleep=lambda s: None)
    assert medians == {"a": [pytest.approx(2.0)] * 3, "b": [pytest.approx(4.0)] * 3}
    blocks = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert blocks == ["a", "b"] + ["a", "b"] * 3  # warm-up of each, then three alternating rounds


# -- real OpenVINO on a real model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def optimized(trained_project, tmp_path_factory):
    from edgekit.host.config import load_config
    from edgekit.host.optimize import optimize

    root = tmp_path_factory.mktemp("cpu-backends")
    shutil.copytree(trained_project, root / "p", ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = root / "p" / "deploy.toml"
    config.write_text(config.read_text() + "\n[validation]\nmin_cosine = 0.9\n")  # every INT8 file ships
    return optimize(load_config(config), say=lambda m: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", [MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ])
def test_openvino_builds_runs_and_validates_every_model_file(optimized, tmp_path, name):
    pytest.importorskip("openvino")
    from edgekit.device.backends.openvino import OpenVinoBackend
    from edgekit.device.benchmark import Plan
    from edgekit.device.contract.validate import compare, reference_key

    backend = OpenVinoBackend()
    about = backend.describe()
    assert about["version"][:4].isdigit() and "CPU" in about["devices"] and "flags_read" in about["isa"]
    cache = tmp_path / "cache"
    progress = []
    meta = backend.build(optimized.files[name], tmp_path, {"batch_sizes": [1, 8], "threads": 2,
                                                           "openvino_cache_dir": str(cache)}, progress.append)
    assert (tmp_path / "model.xml").is_file() and any(cache.iterdir()) and "OpenVINO IR" in progress[0]
    engine = backend.load(tmp_path, meta)
    with np.load(optimized.files[REFERENCE]) as data:  # the device's rule: against the host's outputs of this file
        inputs, outputs, labels = data["inputs"], data[reference_key(name)], data["labels"]
    actual = np.concatenate([engine.run(inputs[i:i + 8]) for i in range(0, len(inputs), 8)])
    verdict = compare(outputs, actual, labels, "fp32" if name == MODEL_FP32 else "int8", {})
    assert verdict["passed"], verdict["reason"]
    stats = engine.benchmark(8, Plan(warmup_s=0.05, duration_s=0.2, min_iterations=5))
    assert stats["batch"] == 8 and stats["iterations"] >= 5
    assert set(stats["latency_ms"]) >= {"min", "mean", "median", "p90", "p95", "p99", "max", "cv_percent"}
    engine.close()


# -- without OpenVINO ----------------------------------------------------------------------------------
BLOCK_OPENVINO = "import sys; sys.modules['openvino'] = None\n"


def test_without_openvino_the_device_package_still_works():
    code = BLOCK_OPENVINO + (
        "import json\nfrom edgekit.device.backends import available, describe_all\n"
        "about = describe_all()\n"
        "print(json.dumps({'available': sorted(available()), 'openvino': about['openvino']}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    assert "openvino" not in info["available"] and "onnxruntime" in info["available"]
    assert info["openvino"] == {"available": False, "reason": "openvino is not installed (pip install openvino)"}


# -- end to end: push to local with backend auto -----------------------------------------------------------------
@pytest.mark.slow
def test_push_local_auto_int8_says_which_runtime_won_and_ships_only_its_file(project):
    pytest.importorskip("openvino")
    config = project / "deploy.toml"
    root = project.parent / "home" / "local-device"
    config.write_text(config.read_text() + f'\n[devices.local]\nkind = "local"\nprecision = "int8"\nroot = "{root}"\n')
    result = run_cli("push", "local", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    auto = report["auto"]
    expected_file = model_file("onnxruntime", "int8", cpu=describe_cpu())
    requested = [c for c in auto["candidates"] if c["requested"]]
    assert [c["backend"] for c in requested] == ["openvino", "onnxruntime"]
    assert all(c["passed"] and c["model_file"] == expected_file and len(c["round_medians_ms"]) == 5
               for c in requested)
    assert report["backend"] == auto["chosen"] and report["precision"] == "int8" and auto["speedup"] >= 1.0
    assert report["validation"]["passed"] and not auto["precision_auto"]
    # the other precisions were measured only to advise: a warning names a faster one, never ships it
    advisers = [c for c in auto["candidates"] if not c["requested"]]
    assert advisers and {c["precision"] for c in advisers} <= {"fp16", "fp32"}
    assert report["baseline"]["label"].startswith("unpruned ") and report["baseline_fp32"]["precision"] == "fp32"
    assert auto["message"].startswith(f"auto chose {auto['chosen']} int8: {auto['speedup']:.2f}× faster than ")
    shipped = json.loads((Spool(root).jobs / report["job"] / "manifest.json").read_text())["files"]
    names = {entry["name"] for entry in shipped}
    assert expected_file in names and not names & (VARIANTS - {expected_file, MODEL_FP32})
    again = run_cli("push", "local", cwd=project, env=dict(os.environ))
    assert again.returncode == 0, again.stderr
    shown = again.stdout + again.stderr
    assert "auto chose " in shown and "(auto)" in again.stdout and "reusing cached engine" in shown
