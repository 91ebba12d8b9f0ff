"""`edgekit device setup` and `edgekit device check`: install and inspect the agent on a device over SSH.

The device needs no internet: the host builds edgekit's wheel (and downloads the CPU runtimes' wheels,
onnxruntime and openvino, for the device's Python and platform) and ships them. The venv is made
with ``--system-site-packages`` so it sees JetPack's TensorRT, numpy and cryptography.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ....device import __version__
from ....device.contract.runtimes import needs_cuda_python
from ...config import DeviceSection, host_home
from ...errors import CheckFailed, ConfigError
from ..keys import load_or_create_key, public_line
from .ssh import SSHTransport

Say = Callable[[str], None]
PROBE = ("import json, platform, sys, sysconfig\n"
         "try:\n    import numpy; numpy_version = numpy.__version__\nexcept ImportError:\n    numpy_version = None\n"
         "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'machine': platform.machine(),"
         " 'platform': sysconfig.get_platform(), 'numpy': numpy_version}))")
UNIT = "edgekit-agent.service"


@dataclass
class DevicePython:
    python: str
    machine: str
    platform: str
    numpy: str | None

    @property
    def pip_platforms(self) -> list[str]:
        """manylinux tags pip may pick for this device (glibc 2.17 covers every JetPack)."""
        arch = self.machine
        return [f"manylinux_2_{minor}_{arch}" for minor in (28, 27, 17)] + [f"manylinux2014_{arch}", f"linux_{arch}"]


@dataclass
class SetupResult:
    python: DevicePython
    venv: str
    service: str
    wheels: list[str] = field(default_factory=list)


def source_tree() -> Path:
    """edgekit's source checkout (where pyproject.toml is), from which the wheel is built."""
    from .... import host

    root = Path(host.__file__).resolve().parent.parent  # host/ sits at the checkout's root
    if not (root / "pyproject.toml").is_file():
        raise ConfigError("`device setup` builds edgekit's wheel from its source tree, which this installation "
                          "does not have; install edgekit from a checkout (pip install -e .)")
    return root


def build_wheel(out: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(source_tree())], capture_output=True, text=True)
    wheels = sorted(out.glob("edgekit-*.whl"))
    if result.returncode != 0 or not wheels:
        raise CheckFailed(f"building edgekit's wheel failed: {result.stderr.strip()[-300:]}")
    return wheels[-1]


def download_runtime(device: DevicePython, out: Path, package: str) -> list[Path]:
    """A CPU runtime's wheel (onnxruntime, openvino) for the device's Python and CPU, without dependencies:
    numpy, the one both need at run time, is on the device (openvino's telemetry is optional)."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out),
               "--python-version", device.python, "--implementation", "cp"]
    for tag in device.pip_platforms:
        command += ["--platform", tag]
    result = subprocess.run(command + [package], capture_output=True, text=True)
    wheels = sorted(out.glob(f"{package}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise CheckFailed(f"no {package} wheel for Python {device.python} on {device.machine}: "
                          f"{result.stderr.strip()[-300:]}; use --no-{package}")
    return wheels


def probe(transport: SSHTransport, interpreter: str) -> DevicePython:
    code, out, err = transport.run(f"{shlex.quote(interpreter)} -c {shlex.quote(PROBE)}")
    if code != 0:
        raise CheckFailed(f"{transport.device_name}: cannot run {interpreter} ({err.strip()[-200:]}); set "
                          "python = \"/path/to/python3\" for the device in deploy.toml")
    info = json.loads(out)
    major, minor = map(int, info["python"].split("."))
    if (major, minor) < (3, 8):
        raise CheckFailed(f"{transport.device_name}: Python {info['python']} is too old; edgekit needs 3.8+")
    if info["numpy"] is None:
        raise CheckFailed(f"{transport.device_name}: numpy is missing for {interpreter}; install it on the device "
                          "(sudo apt-get install python3-numpy)")
    return DevicePython(info["python"], info["machine"], info["platform"], info["numpy"])


def install(transport: SSHTransport, device: DeviceSection, with_onnxruntime: bool, say: Say,
            with_openvino: bool = False) -> SetupResult:
    python = probe(transport, device.python)
    say(f"{transport.device_name}: Python {python.python} on {python.machine}, numpy {python.numpy}")
    dist = posixpath.join(transport.root, "dist")
    transport.makedirs(dist)
    shipped = []
    with tempfile.TemporaryDirectory(prefix="edgekit-setup-") as tmp:
        wheels = [build_wheel(Path(tmp))]
        for package, wanted in (("onnxruntime", with_onnxruntime), ("openvino", with_openvino)):
            if wanted:
                wheels += download_runtime(python, Path(tmp), package)
        if needs_cuda_python(device.backend):
            from .cuda_wheels import cuda_python_wheels

            wheels += cuda_python_wheels(transport.run, python.python, python.pip_platforms, Path(tmp), say,
                                         transport.device_name)
        for wheel in wheels:
            transport.sftp.put(str(wheel), posixpath.join(dist, wheel.name))
            shipped.append(wheel.name)
    say(f"{transport.device_name}: shipped {', '.join(shipped)}")
    venv = shlex.quote(transport.venv)
    files = " ".join(shlex.quote(posixpath.join(dist, name)) for name in shipped)
    steps = [f"{shlex.quote(device.python)} -m venv --system-site-packages {venv}",
             f"{venv}/bin/python -m pip install -q --no-index --no-deps --force-reinstall {files}",
             f"{venv}/bin/edgekit-agent --version"]
    for step in steps:
        code, _, err = transport.run(step)
        if code != 0:
            raise CheckFailed(f"{transport.device_name}: `{step}` failed: {err.strip()[-300:]}")
    transport.ensure_layout()
    transport.trust(public_line(load_or_create_key(host_home())))
    service = start_service(transport, say)
    return SetupResult(python, transport.venv, service, shipped)


def start_service(transport: SSHTransport, say: Say) -> str:
    """System unit via passwordless sudo, else a user unit with lingering, else start the agent now."""
    user_unit = transport.agent_command("install-service")
    if transport.run("sudo -n true")[0] == 0:
        code, out, _ = transport.run(f"{user_unit} --system --user \"$(id -un)\"")
        tmp = posixpath.join(transport.root, UNIT)
        with transport.sftp.open(tmp, "w") as handle:
            handle.write(out.encode())
        command = (f"sudo -n install -m 0644 {shlex.quote(tmp)} /etc/systemd/system/{UNIT} && "
                   f"sudo -n systemctl daemon-reload && sudo -n systemctl enable --now {UNIT} && "
                   f"sudo -n systemctl restart {UNIT}")
        if code == 0 and transport.run(command)[0] == 0:
            return "systemd system unit (starts at boot)"
    if transport.run("systemctl --user show-environment")[0] == 0:
        unit_dir = "~/.config/systemd/user"
        command = (f"mkdir -p {unit_dir} && {user_unit} --output {unit_dir}/{UNIT} && "
                   f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT} && "
                   f"systemctl --user restart {UNIT}")
        if transport.run(command)[0] == 0:
            linger = transport.run("loginctl enable-linger \"$(id -un)\"")[0] == 0
            return "systemd user unit" + (" with lingering (starts at boot)" if linger else
                                          " (no lingering: starts at login only; ask an admin for "
                                          "`loginctl enable-linger`)")
    say(f"{transport.device_name}: no usable systemd; starting the agent now — it will not start at boot")
    code, unit, err = transport.run(user_unit)
    if code != 0:
        raise CheckFailed(f"{transport.device_name}: install-service failed: {err.strip()[-200:]}")
    from ....device.contract.service import parse_exec_start

    command = " ".join(shlex.quote(part) for part in parse_exec_start(unit))
    log = shlex.quote(transport.path("agent.log"))
    transport.run(f"nohup setsid {command} >> {log} 2>&1 < /dev/null & sleep 1", timeout=60)
    if not transport.agent_alive():
        raise CheckFailed(f"{transport.device_name}: the agent did not start; see {transport.path('agent.log')}")
    return "background process (no systemd)"


def check(transport: Any) -> dict:
    """What `edgekit device check` reports: reachability, agent, backends, device, disk, and whether every
    active model's engine is there and loads (``model_health``)."""
    status = transport.status(load_engines=True)
    destination = getattr(transport, "destination", None) or transport.spool.root
    return {"device": transport.device_name, "reachable": True, "destination": str(destination),
            "model_health": status.get("model_health", {}),
            "host_version": __version__, "agent_version": status.get("version"), "agent_running": status["running"],
            "queued": status.get("queued", []), "unfinished": status.get("unfinished", []),
            "models": status.get("models", {}), "backends": status.get("backends", {}),
            "cuda": status.get("cuda", []),
            "device_info": status.get("device", {}), "free_disk_bytes": status.get("free_disk_bytes")}
