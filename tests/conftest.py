"""Shared fixtures: real digits data, a small trained project, isolated edgekit homes, agent clean-up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
EDGEKIT = str(BIN / "edgekit")
AGENT = str(BIN / "edgekit-agent")

TINY_PROJECT = """\
[project]
name = "tiny"

[model]
arch = "resnet20"
width = 0.25
num_classes = 10
checkpoint = "runs/tiny.pt"

[data]
path = "data"

[input]
batch_sizes = [1, 8]

[train]
epochs = 2
augment = ["crop"]

[optimize]
reference_samples = 32

[benchmark]
warmup_s = 0.05
duration_s = 0.2
min_iterations = 5
"""


def run_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([EDGEKIT, *args], cwd=cwd, env=env or os.environ.copy(), capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"edgekit {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from edgekit.host.data import write_digits

    target = tmp_path_factory.mktemp("digits")
    write_digits(target)
    return target


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, digits_dir) -> Path:
    """A project trained once per session through the real CLI; tests copy it."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(digits_dir, root / "data")
    (root / "deploy.toml").write_text(TINY_PROJECT)
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
