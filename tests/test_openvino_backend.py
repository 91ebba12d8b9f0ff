"""The OpenVINO backend: pure settings and the agent without it (real builds: tests/test_cpu_backends.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekit.device.backends import BackendUnavailable
from edgekit.device.backends.openvino import choose_device, compile_config
from edgekit.device.cpu import cpu_flags, describe_cpu, summarize_isa

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
