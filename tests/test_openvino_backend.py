"""The OpenVINO backend: pure settings, real OpenVINO on a real trained model, and the agent without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgekit.device.backends import BackendUnavailable
from edgekit.device.backends.openvino import choose_device, compile_config
from edgekit.device.cpu import cpu_flags, describe_cpu, summarize_isa
from edgekit.device.manifest import MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_QDQ, REFERENCE

HASWELL = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2680 v3\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
ORIN = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


def test_isa_says_where_u8s8_can_saturate():
    avx2 = summarize_isa("x86_64", cpu_flags(HASWELL))
    arm = summarize_isa("aarch64", cpu_flags(ORIN))
    assert avx2["u8s8_saturates"] and avx2["int8_dot"] == [] and "avx2" in avx2["isa"]
    assert arm["family"] == "arm" and not arm["u8s8_saturates"] and arm["isa"] == ["asimd", "asimddp"]
    assert describe_cpu(HASWELL, "x86_64")["model"].startswith("Intel(R) Xeon(R)")


def test_openvino_device_and_compile_settings():
    assert choose_device(["CPU", "GPU.0"], None) == "CPU" and choose_device(["CPU", "GPU.0"], "gpu") == "GPU"
    with pytest.raises(BackendUnavailable, match="NPU is not present"):
        choose_device(["CPU"], "NPU")
    config = compile_config("CPU", 2, "/root/.edgekit/cache/openvino")
    assert config["INFERENCE_PRECISION_HINT"] == "f32" and config["INFERENCE_NUM_THREADS"] == "2"
    assert config["CACHE_DIR"].endswith("openvino") and "INFERENCE_NUM_THREADS" not in compile_config("CPU", 0, None)


def test_without_openvino_the_device_package_still_works():
    code = ("import sys; sys.modules['openvino'] = None\nimport json\n"
            "from edgekit.device.backends import available, describe_all\n"
            "print(json.dumps({'available': sorted(available()), 'openvino': describe_all()['openvino']}))\n")
    info = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert "openvino" not in info["available"] and "onnxruntime" in info["available"]
    assert info["openvino"] == {"available": False, "reason": "openvino is not installed (pip install openvino)"}


@pytest.fixture(scope="module")
def optimized(trained_project, tmp_path_factory):
    from edgekit.host.config import load_config
    from edgekit.host.pipeline import optimize

    root = tmp_path_factory.mktemp("openvino")
    shutil.copytree(trained_project, root / "p", ignore=shutil.ignore_patterns("home", ".edgekit"))
    return optimize(load_config(root / "p" / "deploy.toml"), say=lambda m: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", [MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_QDQ])
def test_openvino_builds_runs_and_validates_every_model_file(optimized, tmp_path, name):
    pytest.importorskip("openvino")
    from edgekit.device.backends.openvino import OpenVinoBackend
    from edgekit.device.benchmark import Plan
    from edgekit.device.validate import compare

    backend = OpenVinoBackend()
    about = backend.describe()
    assert about["version"][:4].isdigit() and "CPU" in about["devices"] and "flags_read" in about["isa"]
    cache = tmp_path / "cache"
    progress = []
    meta = backend.build(optimized.files[name], tmp_path, {"batch_sizes": [1, 8], "threads": 2,
                                                           "openvino_cache_dir": str(cache)}, progress.append)
    assert (tmp_path / "model.xml").is_file() and any(cache.iterdir()) and "OpenVINO IR" in progress[0]
    engine = backend.load(tmp_path, meta)
    with np.load(optimized.files[REFERENCE]) as data:
        inputs, outputs, labels = data["inputs"], data["outputs"], data["labels"]
    actual = np.concatenate([engine.run(inputs[i:i + 8]) for i in range(0, len(inputs), 8)])
    verdict = compare(outputs, actual, labels, "fp32" if name == MODEL_FP32 else "int8", {})
    assert verdict["passed"], verdict["reason"]
    stats = engine.benchmark(8, Plan(warmup_s=0.05, duration_s=0.2, min_iterations=5))
    assert stats["batch"] == 8 and stats["iterations"] >= 5
    assert set(stats["latency_ms"]) >= {"min", "mean", "median", "p90", "p95", "p99", "max", "cv_percent"}
    engine.close()
