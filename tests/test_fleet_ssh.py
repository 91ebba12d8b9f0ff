"""Rollouts over SSH to a small fleet from an Ansible inventory: real sshd servers on 127.0.0.1, a real agent
per device root. A failing canary halts with the later waves untouched; a wave is rolled back; a rollout whose
host was killed resumes without pushing a finished device again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import EDGEKIT, run_cli
from .fleet_lab import attach_agents, engine_of, job_count
from .sshd import SSHServer, clear_stale, device_dir, device_root, device_user, free_port

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
NAMES = ["f1", "f2", "f3"]
FLEET_USER = "edgekit-fleet"


def inventory(servers: dict, user: str, venv: Path, precision: str = "fp32") -> str:
    hosts = "\n".join(f"{name} ansible_port={server.port} edgekit_root={device_root(name)}"
                      for name, server in servers.items())
    return (f"[fleet]\n{hosts}\n\n[fleet:vars]\nansible_host=127.0.0.1\nansible_user={user}\n"
            f"edgekit_backend=onnxruntime\nedgekit_precision={precision}\nedgekit_venv={venv}\n"
            "edgekit_python=/usr/bin/python3\n")


@pytest.fixture(scope="module")
def fleet(trained_project, ssh_lab, tmp_path_factory):
    """The trained project with three devices from hosts.ini (each its own sshd), agents running.

    As root they log in as a user of their own, not the shared test user, whose agents, roots and venv other
    test sessions on the machine may clear or reinstall; f1 is set up for real, f2 and f3 share its venv."""
    env = dict(os.environ, **ssh_lab.env)
    project = tmp_path_factory.mktemp("fleet") / "p"
    shutil.copytree(trained_project, project, ignore=shutil.ignore_patterns("home", ".edgekit"))
    user, home = device_user(FLEET_USER)
    venv = home / device_dir("fleet-venv")
    clear_stale(home)
    folder = Path(tempfile.mkdtemp(prefix="edgekit-fleet-sshd-"))
    os.chmod(folder, 0o755)
    servers = {name: SSHServer(folder / name, free_port(), user).start(ssh_lab.home / ".ssh" / "id_ed25519.pub")
               for name in NAMES}
    Path(env["EDGEKIT_HOME"]).mkdir(parents=True, exist_ok=True)
    with open(Path(env["EDGEKIT_HOME"]) / "known_hosts", "a") as known:
        known.write("".join(server.known_hosts_line() + "\n" for server in servers.values()))
    (project / "hosts.ini").write_text(inventory(servers, user, venv))
    config = project / "deploy.toml"
    config.write_text(config.read_text() + '\n[fleet]\ninventory = "hosts.ini"\n')
    roots = {name: home / device_dir(name) for name in NAMES}
    lab = type("Fleet", (), {})()
    lab.project, lab.env, lab.servers, lab.roots, lab.user, lab.venv = project, env, servers, roots, user, venv
    try:
        setup = run_cli("device", "setup", "f1", "--no-openvino", cwd=project, env=env)
        assert setup.returncode == 0, setup.stderr
        attach_agents(project, env, NAMES[1:])
        yield lab
    finally:
        for root in roots.values():
            stop_agent(root)
        for server in servers.values():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def stop_agent(root: Path) -> None:
    """The agent this module started in ``root`` (its pid from agent.json), and nothing else."""
    try:
        os.kill(json.loads((root / "agent.json").read_text())["pid"], signal.SIGKILL)
    except (OSError, KeyError, ValueError):
        pass


def records(project: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((project / ".edgekit" / "rollouts").glob("*.json"))]


def test_a_failing_canary_halts_the_rollout_and_no_later_device_is_touched(fleet):
    config = fleet.project / "deploy.toml"
    original = config.read_text()
    config.write_text(original + "\n[budget]\nmax_median_ms = 0.0001\n")  # no device can meet it
    try:
        result = run_cli("push", "--group", "fleet", "--waves", "1,100%", "--json", cwd=fleet.project, env=fleet.env)
    finally:
        config.write_text(original)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "halted after wave 1" in result.stderr
    rows = {row["device"]: row for row in json.loads(result.stdout)["rows"]}
    assert rows["f1"]["state"] == "failed" and "budget.max_median_ms" in rows["f1"]["error"]
    assert rows["f2"]["state"] == rows["f3"]["state"] == "skipped"
    assert job_count(fleet.roots["f1"]) == 1 and engine_of(fleet.roots["f1"]) is None  # built, never served
    assert job_count(fleet.roots["f2"]) == job_count(fleet.roots["f3"]) == 0
    resumed = run_cli("rollout", "resume", cwd=fleet.project, env=fleet.env)
    assert resumed.returncode == 2 and "halted" in resumed.stderr


def test_a_rollout_then_the_rollback_of_one_wave_then_of_the_rest(fleet):
    first = run_cli("push", "--group", "fleet", "--waves", "1,100%", "--max-parallel", "2", "--json",
                    cwd=fleet.project, env=fleet.env)
    assert first.returncode == 0, first.stderr
    before = {name: engine_of(root) for name, root in fleet.roots.items()}
    assert all(before.values()) and len(set(before.values())) == 1
    rows = json.loads(first.stdout)["rows"]
    assert [(r["device"], r["wave"], r["state"]) for r in rows] == [("f1", 1, "done"), ("f2", 2, "done"),
                                                                    ("f3", 2, "done")]
    assert all(r["backend"] == "onnxruntime" and r["precision"] == "fp32" and r["p50_ms"] > 0 for r in rows)
    (fleet.project / "hosts.ini").write_text(inventory(fleet.servers, fleet.user, fleet.venv, precision="int8"))
    second = run_cli("push", "--group", "fleet", "--waves", "1,100%", "--json", cwd=fleet.project, env=fleet.env)
    assert second.returncode == 0, second.stderr
    after = {name: engine_of(root) for name, root in fleet.roots.items()}
    assert all(after[name] != before[name] for name in NAMES)
    wave = run_cli("rollback", "--group", "fleet", "--wave", "2", "--json", cwd=fleet.project, env=fleet.env)
    assert wave.returncode == 0, wave.stderr
    assert {name: engine_of(root) for name, root in fleet.roots.items()} == {"f1": after["f1"], "f2": before["f2"],
                                                                               "f3": before["f3"]}
    rest = run_cli("rollback", "--group", "fleet", cwd=fleet.project, env=fleet.env)
    assert rest.returncode == 0, rest.stderr
    assert {name: engine_of(root) for name, root in fleet.roots.items()} == before
    status = run_cli("rollout", "status", "--json", cwd=fleet.project, env=fleet.env)
    assert json.loads(status.stdout)["rollout"]["status"] == "rolled back"
    assert {r["state"] for r in json.loads(status.stdout)["rows"]} == {"rolled back"}


def test_a_rollout_whose_host_was_killed_resumes_without_pushing_finished_devices(fleet):
    (fleet.project / "hosts.ini").write_text(inventory(fleet.servers, fleet.user, fleet.venv, precision="int8"))
    counts = {name: job_count(root) for name, root in fleet.roots.items()}
    known = len(records(fleet.project))
    host = subprocess.Popen([EDGEKIT, "push", "--group", "fleet", "--waves", "1,100%", "--max-parallel", "1"],
                            cwd=fleet.project, env=fleet.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill the host as soon as the canary is done
            latest = records(fleet.project)[known:]
            if latest and latest[-1]["devices"]["f1"]["state"] == "done":
                break
            assert host.poll() is None, "the rollout ended before it could be interrupted"
            time.sleep(0.05)
        os.kill(host.pid, signal.SIGKILL)
    finally:
        host.wait(timeout=30)
    interrupted = records(fleet.project)[-1]
    assert interrupted["status"] == "running" and interrupted["devices"]["f1"]["state"] == "done"
    canary_job = interrupted["devices"]["f1"]["job"]
    resumed = run_cli("rollout", "resume", "--json", cwd=fleet.project, env=fleet.env)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)["rollout"]
    assert final["id"] == interrupted["id"] and final["status"] == "done"
    assert final["devices"]["f1"]["job"] == canary_job and job_count(fleet.roots["f1"]) == counts["f1"] + 1
    assert all(final["devices"][name]["state"] == "done" for name in NAMES)
    assert all(job_count(fleet.roots[name]) in (counts[name] + 1, counts[name] + 2) for name in ("f2", "f3"))
