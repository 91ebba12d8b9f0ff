"""Fleets of loopback devices for the SSH tests and benchmarks/fleet.py: each device its own sshd (and, in the
benchmark, its own user), its own agent root; the agent's venv is installed once by `edgekit device setup` on
the first device and shared by the others, which only get their root, the host's key and a running agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ATTACH = """
import sys
from edgekit.host.config import host_home, load_config
from edgekit.host.ship.keys import load_or_create_key, public_line
from edgekit.host.ship.transports.setup import start_service
from edgekit.host.ship.transports.ssh import SSHTransport

config = load_config(sys.argv[1])
for name in sys.argv[2:]:
    transport = SSHTransport(name, config.device(name))
    try:
        transport.require_agent()
        transport.ensure_layout()
        transport.trust(public_line(load_or_create_key(host_home())))
        start_service(transport, lambda message: None)
    finally:
        transport.close()
"""


def attach_agents(project: Path, env: dict, names: list[str]) -> None:
    """What `edgekit device setup` does after installing the venv: layout, trusted key, agent started."""
    result = subprocess.run([sys.executable, "-c", ATTACH, str(project / "deploy.toml"), *names], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"attaching agents failed:\n{result.stderr}")


def engine_of(root: Path, model: str = "tiny") -> str | None:
    """The engine key ``current`` points at in an agent root on this machine (the tests run as root or as
    the device user, so they can read it)."""
    link = root / "models" / model / "current"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def job_count(root: Path) -> int:
    jobs = root / "jobs"
    return len([p for p in jobs.iterdir() if p.is_dir()]) if jobs.is_dir() else 0
