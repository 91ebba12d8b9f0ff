"""cuda-python for the device's own CUDA, chosen and fetched on the host for `edgekit device setup`.

An unpinned ``pip install cuda-python`` resolves to the newest CUDA major, which a Jetson's driver cannot
run (JetPack 5 has CUDA 11.4, JetPack 6 12.2/12.6, JetPack 7 13.0): it imports, then its first call fails.
So setup reads the device's CUDA (``nvcc --version``, ``/usr/local/cuda/version.json|txt``, else the L4T
release's JetPack), asks pip for the newest cuda-python of the same major whose minor is not newer than
the device's, downloads the wheels for the device's Python and CPU here (the device needs no internet,
as for onnxruntime) and ships them; where no release fits (CUDA 10.2 on JetPack 4) it says what to install.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# nvcc's location on JetPack (not on PATH for non-login shells), then the version files, then L4T.
PROBE = ("(command -v nvcc >/dev/null && nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>/dev/null; "
         "echo '--- version.json'; cat /usr/local/cuda/version.json 2>/dev/null; "
         "echo '--- version.txt'; cat /usr/local/cuda/version.txt 2>/dev/null; "
         "echo '--- nv_tegra_release'; head -1 /etc/nv_tegra_release 2>/dev/null; true")
# L4T release → the CUDA its JetPack ships (NVIDIA's JetPack release notes)
L4T_CUDA = ((38, 0, "13.0"), (36, 4, "12.6"), (36, 0, "12.2"), (35, 0, "11.4"), (34, 0, "11.4"), (32, 0, "10.2"))
FIRST_CUDA_PYTHON_MAJOR = 11  # cuda-python starts at CUDA 11 (11.8.x)


@dataclass(frozen=True)
class DeviceCuda:
    version: Optional[str]  # "12.6"
    source: str  # where it was read


def parse_probe(text: str) -> DeviceCuda:
    """The device's CUDA version from the PROBE output, the most direct source first."""
    nvcc = re.search(r"release (\d+\.\d+)", text.split("--- version.json")[0])
    if nvcc:
        return DeviceCuda(nvcc.group(1), "nvcc --version")
    json_part = text.split("--- version.json")[-1].split("--- version.txt")[0].strip()
    if json_part:
        try:
            version = json.loads(json_part)["cuda"]["version"]
            return DeviceCuda(".".join(version.split(".")[:2]), "/usr/local/cuda/version.json")
        except (ValueError, KeyError, TypeError):
            pass
    txt = re.search(r"CUDA Version (\d+\.\d+)", text.split("--- version.txt")[-1].split("--- nv_tegra_release")[0])
    if txt:
        return DeviceCuda(txt.group(1), "/usr/local/cuda/version.txt")
    l4t = re.search(r"R(\d+) \(release\), REVISION: (\d+)", text.split("--- nv_tegra_release")[-1])
    if l4t:
        major, revision = int(l4t.group(1)), int(l4t.group(2))
        for release, minimum, cuda in L4T_CUDA:
            if major == release and revision >= minimum or major > release:
                return DeviceCuda(cuda, "L4T R{}.{} (JetPack's CUDA)".format(major, revision))
    return DeviceCuda(None, "no nvcc, /usr/local/cuda/version.* or /etc/nv_tegra_release")


def requirement(cuda: str) -> Optional[str]:
    """The pip requirement for this CUDA: same major, minor not newer (the driver must know the runtime)."""
    major, minor = (int(part) for part in cuda.split(".")[:2])
    if major < FIRST_CUDA_PYTHON_MAJOR:
        return None
    if major == 11:
        return "cuda-python>=11.4,<12"  # one 11.x line (11.8.x); CUDA 11 minor-version compatibility
    return "cuda-python>={}.0,<{}.{}".format(major, major, minor + 1)


def advice(cuda: DeviceCuda) -> str:
    """What to install by hand when no cuda-python fits."""
    if cuda.version is None:
        return ("could not read the device's CUDA version ({}); install the cuda-python release matching its CUDA "
                "(pip install 'cuda-python==<major>.<minor>.*') or pycuda".format(cuda.source))
    return ("CUDA {} ({}) has no cuda-python release; install pycuda on the device "
            "(sudo apt-get install python3-pycuda) — edgekit uses it when cuda-python is absent".format(
                cuda.version, cuda.source))


def download(spec: str, python: str, platforms: list[str], out: Path) -> list[Path]:
    """cuda-python and its dependencies (cuda-bindings, cuda-pathfinder) as wheels for the device."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(out),
               "--python-version", python, "--implementation", "cp"]
    for tag in platforms:
        command += ["--platform", tag]
    before = set(out.glob("*.whl"))
    result = subprocess.run(command + [spec], capture_output=True, text=True)
    wheels = sorted(set(out.glob("*.whl")) - before)
    if result.returncode != 0 or not any(w.name.startswith("cuda_python-") for w in wheels):
        raise RuntimeError(result.stderr.strip()[-300:] or "no wheel")
    return wheels


def cuda_python_wheels(run: Callable[[str], tuple], python: str, platforms: list[str], out: Path,
                       say: Callable[[str], None], device: str) -> list[Path]:
    """Probe the device's CUDA and fetch the matching cuda-python; [] (with advice said) where none fits."""
    code, text, _ = run(PROBE)
    cuda = parse_probe(text if code == 0 else "")
    spec = requirement(cuda.version) if cuda.version else None
    if spec is None:
        say(f"[yellow]{device}: {advice(cuda)}[/yellow]")
        return []
    try:
        wheels = download(spec, python, platforms, out)
    except RuntimeError as exc:
        say(f"[yellow]{device}: no {spec} wheel for Python {python} ({exc}); {advice(cuda)}[/yellow]")
        return []
    names = ", ".join(" ".join(w.name.split("-")[:2]) for w in wheels)
    say(f"{device}: CUDA {cuda.version} (from {cuda.source}) → {names}")
    return wheels
