"""`device setup` picks the cuda-python that matches the device's CUDA, read from the device."""

from __future__ import annotations

import pytest

from edgekit.host.ship.transports.cuda_wheels import PROBE, cuda_python_wheels, parse_probe, requirement
from edgekit.host.ship.transports.setup import DevicePython

NVCC = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2023 NVIDIA Corporation
Built on Tue_Aug_15_22:08:11_PDT_2023
Cuda compilation tools, release 12.2, V12.2.140
Build cuda_12.2.r12.2/compiler.33191640_0
"""
VERSION_JSON = '{\n   "cuda" : {\n      "name" : "CUDA SDK",\n      "version" : "11.4.19"\n   }\n}'
TEGRA = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
         "DATE: Wed Jan  8 01:49:37 UTC 2025")


def probe_output(nvcc: str = "", json_text: str = "", txt: str = "", tegra: str = "") -> str:
    return f"{nvcc}--- version.json\n{json_text}\n--- version.txt\n{txt}\n--- nv_tegra_release\n{tegra}\n"


def test_cuda_version_from_each_source_in_order():
    nvcc = parse_probe(probe_output(NVCC, VERSION_JSON, tegra=TEGRA))
    assert (nvcc.version, nvcc.source) == ("12.2", "nvcc --version")
    assert parse_probe(probe_output(json_text=VERSION_JSON, tegra=TEGRA)).version == "11.4"
    assert parse_probe(probe_output(txt="CUDA Version 10.2.300\n")).version == "10.2"
    from_l4t = parse_probe(probe_output(tegra=TEGRA))
    assert from_l4t.version == "12.6" and "L4T R36.4" in from_l4t.source
    assert parse_probe(probe_output(tegra="# R35 (release), REVISION: 4.1, GCID: 33958178")).version == "11.4"
    assert parse_probe(probe_output(tegra="# R36 (release), REVISION: 3.0, GCID: 1")).version == "12.2"
    assert parse_probe(probe_output()).version is None
    assert "nvcc --version" in PROBE and "/etc/nv_tegra_release" in PROBE


def test_requirement_keeps_the_major_and_never_a_newer_minor():
    assert requirement("12.2") == "cuda-python>=12.0,<12.3"
    assert requirement("13.0") == "cuda-python>=13.0,<13.1"
    assert requirement("11.4") == "cuda-python>=11.4,<12"
    assert requirement("10.2") is None


def test_no_fitting_release_says_what_to_install(tmp_path):
    said = []
    wheels = cuda_python_wheels(lambda command: (0, probe_output(txt="CUDA Version 10.2.300"), ""), "3.6",
                                ["manylinux2014_aarch64"], tmp_path, said.append, "nano")
    assert wheels == [] and "python3-pycuda" in said[0] and "CUDA 10.2" in said[0]


@pytest.mark.slow
def test_jetpack6_wheels_are_fetched_for_the_device(tmp_path):
    """Real pip download from the registry: JetPack 6.1 (CUDA 12.6), Python 3.10 on aarch64."""
    device = DevicePython("3.10", "aarch64", "linux-aarch64", "1.21.5")
    said = []
    wheels = cuda_python_wheels(lambda command: (0, probe_output(tegra=TEGRA), ""), device.python,
                                device.pip_platforms, tmp_path, said.append, "orin")
    names = [w.name for w in wheels]
    assert any(n.startswith("cuda_python-12.6") for n in names) and all("aarch64" in n or "none-any" in n
                                                                          for n in names)
    assert "CUDA 12.6" in said[0]
