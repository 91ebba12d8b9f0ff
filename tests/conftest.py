"""Shared fixtures: real digits data, a small trained project, isolated edgekit homes, agent clean-up."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edgekit.host.config import deploy_toml

from .sshd import device_root

# torch's intra-op thread count changes the order of float sums, hence what a training ends with (the tiny
# project trained with 1 and with 2 threads gives different weights): one count for this process and every CLI
# it starts, whatever the machine's cores, so the session's tiny model depends on its seed only.
TEST_THREADS = 2
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)

BIN = Path(sys.executable).parent
EDGEKIT = str(BIN / "edgekit")
AGENT = str(BIN / "edgekit-agent")

TINY_PROJECT = deploy_toml(
    project={"name": "tiny"},
    model={"arch": "resnet20", "width": 0.25, "num_classes": 10, "checkpoint": "runs/tiny.pt"},
    data={"path": "data"},
    input={"batch_sizes": [1, 8]},
    train={"epochs": 8, "augment": ["crop"]},
    optimize={"reference_samples": 32},
    benchmark={"warmup_s": 0.05, "duration_s": 0.2, "min_iterations": 5},
)


CLI_TIMEOUT_S = 1800  # a guard against a hung command, not a budget: training takes 3-4x longer on a loaded machine


def run_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([EDGEKIT, *args], cwd=cwd, env=env or os.environ.copy(), capture_output=True,
                            text=True, timeout=CLI_TIMEOUT_S)
    if check and result.returncode != 0:
        raise AssertionError(f"edgekit {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state: unseeded draws (a fresh model's weights, random inputs)
    are the same numbers on every run, so a tolerance that holds once holds always."""
    import numpy as np
    import torch

    torch.set_num_threads(TEST_THREADS)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from edgekit.host.train.data import write_digits

    target = tmp_path_factory.mktemp("digits")
    write_digits(target)
    return target


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, digits_dir) -> Path:
    """A project trained once per session through the real CLI; tests copy it."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(digits_dir, root / "data")
    (root / "deploy.toml").write_text(TINY_PROJECT)
    reuse = Path(os.environ.get("EDGEKIT_TEST_CHECKPOINT", "/nonexistent"))  # a tiny.pt trained from TINY_PROJECT
    if reuse.is_file():  # lets a loaded machine skip re-training; unset (CI), the project is trained here
        (root / "runs").mkdir()
        shutil.copy(reuse, root / "runs" / "tiny.pt")
        return root
    env = dict(os.environ, EDGEKIT_HOME=str(root / "home"))
    run_cli("train", cwd=root, env=env, check=True)
    return root


def kill_agents(home: Path) -> None:
    for status in home.rglob("agent.json"):
        pid = json.loads(status.read_text()).get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.05)


@pytest.fixture
def project(tmp_path, trained_project, monkeypatch) -> Path:
    """A fresh copy of the trained project with its own EDGEKIT_HOME (its own local device)."""
    root = tmp_path / "project"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    yield root
    kill_agents(home)


# -- SSH devices ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ssh_lab(tmp_path_factory):
    """A host-side home (~/.ssh with a client key, EDGEKIT_HOME) and a way to start sshd servers."""
    from .sshd import SSHServer, clear_stale, device_user, free_port, keygen, sshd_binary, stop_session_agents

    if sshd_binary() is None:
        pytest.skip("OpenSSH server is not installed (make test installs it when run as root)")
    probe = subprocess.run(["/usr/bin/env", "python3", "-c", "import numpy, venv"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the device side needs python3 with numpy and venv (apt-get install python3-numpy python3-venv)")
    user, device_home = device_user()
    clear_stale(device_home)  # device roots of earlier runs
    home = tmp_path_factory.mktemp("sshhome")
    (home / ".ssh").mkdir(mode=0o700)
    keygen(home / ".ssh" / "id_ed25519")
    servers: list[SSHServer] = []

    # sshd reads authorized_keys as the device user, who cannot enter pytest's 0700 temp directory
    servers_dir = Path(tempfile.mkdtemp(prefix="edgekit-sshd-"))
    os.chmod(servers_dir, 0o755)

    def server(name: str = "dev") -> SSHServer:
        started = SSHServer(servers_dir / name, free_port(), user).start(home / ".ssh" / "id_ed25519.pub")
        servers.append(started)
        return started

    lab = type("Lab", (), {})()
    lab.home, lab.user, lab.device_home, lab.server = home, user, device_home, server
    lab.env = {"HOME": str(home), "EDGEKIT_HOME": str(home / "edgekit"), "SSH_AUTH_SOCK": ""}
    yield lab
    for started in servers:
        started.stop()
    shutil.rmtree(servers_dir, ignore_errors=True)
    stop_session_agents(user, device_home)


def ssh_fingerprint(server) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(server.host_key.with_suffix(".pub"))], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[1]


def add_device(project: Path, env: dict, lab, server, name: str, group: str | None = None) -> None:
    result = run_cli("device", "add", name, "--host", "127.0.0.1", "--port", str(server.port), "--user", lab.user,
                     "--trust", ssh_fingerprint(server), cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    extra = [f'root = "{device_root(name)}"', f'venv = "{device_root("venv")}"', 'python = "/usr/bin/python3"']
    if group:
        extra.append(f'groups = ["{group}"]')
    config = project / "deploy.toml"
    config.write_text(config.read_text() + "\n".join(extra) + "\n")


@pytest.fixture(scope="session")
def ssh_device(ssh_lab, trained_project, tmp_path_factory):
    """The trained project with device `jet` (sshd on 127.0.0.1) set up once per session."""
    project = tmp_path_factory.mktemp("sshproject") / "p"
    shutil.copytree(trained_project, project, ignore=shutil.ignore_patterns("home", ".edgekit"))
    env = dict(os.environ, **ssh_lab.env)
    server = ssh_lab.server("main")
    add_device(project, env, ssh_lab, server, "jet")
    setup = run_cli("device", "setup", "jet", "--json", cwd=project, env=env)
    assert setup.returncode == 0, setup.stderr
    assert json.loads(setup.stdout)["wheels"][0].startswith("edgekit-")
    return project, env, server
