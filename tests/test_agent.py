"""The agent as a real process, started with its systemd unit's ExecStart line, on real bundles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.device.agent.admin import agent_running
from edgekit.device.agent.spool import AgentLock, Spool, read_json
from edgekit.device.contract.protocol import DEVICE_INFO, new_job_id
from edgekit.device.contract.service import parse_exec_start
from edgekit.host.config import load_config
from edgekit.host.optimize import optimize
from edgekit.host.ship.bundle import make_manifest, manifest_bytes
from edgekit.host.ship.keys import load_or_create_key, public_line, sign
from edgekit.host.ship.transports.local import LocalTransport

from .conftest import AGENT


def start_agent(root: Path, log_path: Path | None = None) -> subprocess.Popen:
    unit = subprocess.run([AGENT, "install-service", "--root", str(root)], capture_output=True, text=True, check=True)
    command = parse_exec_start(unit.stdout)
    assert Path(command[0]).name == "edgekit-agent" and command[1:] == ["serve", "--root", str(root)]
    log = open(log_path or root.parent / "agent-test.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not agent_running(root):
        assert time.monotonic() < deadline and process.poll() is None, "agent did not start"
        time.sleep(0.02)
    return process


def prepare(project: Path, precision: str = "fp32") -> tuple[LocalTransport, dict, object]:
    config = load_config(project / "deploy.toml")
    optimized = optimize(config, say=lambda m: None)
    device = config.device("local").model_copy(update={"precision": precision})
    manifest = make_manifest(config, device, optimized.files, dict(optimized.host))
    transport = LocalTransport(device.root)
    key = load_or_create_key(Path(os.environ["EDGEKIT_HOME"]))
    transport.trust(public_line(key))
    for entry in manifest["files"]:
        transport.upload(entry["sha256"], optimized.files[entry["name"]], lambda n: None)
    return transport, manifest, key


def publish(transport: LocalTransport, manifest: dict, key, payload: bytes | None = None,
            signature: bytes | None = None) -> str:
    job = new_job_id()
    payload = payload if payload is not None else manifest_bytes(manifest)
    transport.publish(job, payload, signature if signature is not None else sign(key, manifest_bytes(manifest)))
    return job


def wait_report(spool: Spool, job: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_json(spool.jobs / job / "state.json") or {}
        if state.get("status") in ("done", "failed") and (spool.jobs / job / "report.json").exists():
            return spool.report(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish")


@pytest.fixture
def agent_root(project):
    transport, manifest, key = prepare(project)
    process = start_agent(transport.spool.root)
    yield transport, manifest, key
    process.kill()
    process.wait()


def test_agent_builds_validates_benchmarks_and_switches_current(agent_root):
    transport, manifest, key = agent_root
    spool = transport.spool
    report = wait_report(spool, publish(transport, manifest, key))
    assert report["status"] == "done", report.get("error")
    assert report["validation"]["passed"] and report["validation"]["top1_agreement"] == 1.0
    assert [b["batch"] for b in report["benchmarks"]] == [1, 8]
    latency = report["benchmarks"][0]["latency_ms"]
    assert 0 < latency["min"] <= latency["median"] <= latency["p99"] <= latency["max"]
    current = spool.models / "tiny" / "current"
    assert (current / "engine.json").is_file() and (current / report["engine"]["file"]).is_file()
    lines = (spool.jobs / report["job"] / "events.jsonl").read_text().splitlines()
    events = [json.loads(line)["kind"] for line in lines]
    assert events[0] == "stage" and events[-1] == "done"


@pytest.mark.parametrize("attack, words", [
    ("tamper", "altered after signing"),
    ("unsigned", "not an ed25519 signature"),
    ("stranger", "does not trust"),
    ("corrupt-blob", "corrupted on the device"),
])
def test_bad_bundles_fail_the_job_and_keep_current(agent_root, tmp_path, attack, words):
    transport, manifest, key = agent_root
    spool = transport.spool
    assert wait_report(spool, publish(transport, manifest, key))["status"] == "done"
    before = spool.current("tiny")
    payload, signature = manifest_bytes(manifest), sign(key, manifest_bytes(manifest))
    if attack == "tamper":
        payload = payload.replace(b'"precision": "fp32"', b'"precision": "int8"')
    elif attack == "unsigned":
        signature = b""
    elif attack == "stranger":
        signature = sign(load_or_create_key(tmp_path / "stranger"), payload)
    else:
        blob = spool.blob(next(e["sha256"] for e in manifest["files"] if e["name"] == "model.onnx"))
        blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    report = wait_report(spool, publish(transport, manifest, key, payload, signature))
    assert report["status"] == "failed" and words in report["error"]
    assert spool.current("tiny") == before and (spool.models / "tiny" / "current" / "engine.json").is_file()


def test_the_agent_takes_a_jobs_uploads_and_refuses_a_forged_one(agent_root):
    """Spool version 2: the job names its writer, and the agent moves that writer's parts into the store when it
    takes the job, each hash checked against the signed manifest; a part whose bytes do not hash to it fails the
    job naming the file, is removed (the next push sends it again), and the active model stays."""
    transport, manifest, key = agent_root
    spool = transport.spool
    assert wait_report(spool, publish(transport, manifest, key))["status"] == "done"
    transport.info = {"spool": 2}
    sha = next(e["sha256"] for e in manifest["files"] if e["name"] == "model.onnx")
    content = spool.blob(sha).read_bytes()
    part = spool.part(sha, transport.writer)
    spool.blob(sha).rename(part)  # as if just uploaded: only the part is on the device
    report = wait_report(spool, publish(transport, manifest, key))
    assert report["status"] == "done", report.get("error")
    assert spool.blob(sha).read_bytes() == content and not part.exists()
    before = spool.current("tiny")  # this push raced the backends again: on a busy machine another may have won
    spool.blob(sha).unlink()
    part.write_bytes(content[:-10] + b"0123456789")
    report = wait_report(spool, publish(transport, manifest, key))
    assert report["status"] == "failed" and "model.onnx" in report["error"] and "corrupted" in report["error"]
    assert not part.exists() and not spool.has_blob(sha)
    assert spool.current("tiny") == before and (spool.models / "tiny" / "current" / "engine.json").is_file()


def test_a_failed_job_has_the_agent_describe_the_device_again(agent_root):
    """A runtime upgraded under a running agent fails the next job ("push again"); the push after it must choose
    its files by the new description, so a failed job refreshes device.json (here: deleted, then back)."""
    transport, manifest, key = agent_root
    described = transport.spool.root / DEVICE_INFO
    until(described.is_file, "the agent's description at start")
    described.unlink()
    report = wait_report(transport.spool, publish(transport, manifest, key, signature=b""))
    assert report["status"] == "failed"
    until(described.is_file, "the description after a failed job")
    assert set(read_json(described)["backends"]) >= {"onnxruntime"}


def until(check, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.1)


def test_agent_killed_during_a_build_finishes_the_job_after_restart(project):
    transport, manifest, key = prepare(project)
    spool = transport.spool
    process = start_agent(spool.root)
    job = publish(transport, manifest, key)
    events = spool.jobs / job / "events.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and b"building" not in (events.read_bytes() if events.exists() else b""):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (read_json(spool.jobs / job / "state.json") or {}).get("status") not in ("done", "failed")
    restarted = start_agent(spool.root)
    try:
        report = wait_report(spool, job)
    finally:
        restarted.kill()
        restarted.wait()
    assert report["status"] == "done" and report["validation"]["passed"]
    assert "agent restarted during this job" in events.read_text()
    assert not list(spool.engines.glob(".build-*")) and (spool.models / "tiny" / "current" / "engine.json").is_file()


def test_a_second_agent_on_the_same_root_exits_quietly(agent_root):
    transport, _, _ = agent_root
    second = subprocess.run([AGENT, "serve", "--root", str(transport.spool.root)], capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 0 and "another agent already serves" in second.stderr


def test_an_agent_whose_log_cannot_be_written_keeps_serving(project):
    """journald gone, or agent.log on a full disk: the agent loses its log lines, not its life."""
    transport, manifest, key = prepare(project)
    agent = start_agent(transport.spool.root, Path("/dev/full"))  # every write: ENOSPC
    try:
        report = wait_report(transport.spool, publish(transport, manifest, key))
        assert report["status"] == "done" and agent.poll() is None, report.get("error")
    finally:
        agent.kill()
        agent.wait()


def test_a_worker_outliving_its_killed_agent_does_not_keep_the_next_agent_out(tmp_path):
    """A forked worker shares the agent's flock; it must let go of it, or a restart finds the root taken."""
    spool = Spool(tmp_path / "root")
    spool.ensure()
    agent = AgentLock(spool)
    assert agent.acquire()
    ready, told = os.pipe()
    worker = os.fork()
    if worker == 0:
        agent.forget()  # as the agent's worker does first
        os.write(told, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        agent.handle.close()  # the agent is gone; its worker is not (yet)
        restarted = AgentLock(spool)
        assert restarted.acquire() and agent_running(spool.root)
    finally:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)


def test_device_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import edgekit.device.agent.main, edgekit.device.jobs.runner, edgekit.device.backends.onnxruntime\n"
            "assert not [m for m in sys.modules if m.startswith('edgekit.host')]\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_republished_job_id_is_dropped_and_the_agent_keeps_serving(agent_root):
    transport, manifest, key = agent_root
    spool = transport.spool
    job = publish(transport, manifest, key)
    assert wait_report(spool, job)["status"] == "done"
    transport.publish(job, manifest_bytes(manifest), sign(key, manifest_bytes(manifest)))  # same id again
    deadline = time.monotonic() + 30
    while (spool.queue / job).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (spool.queue / job).exists()
    assert wait_report(spool, publish(transport, manifest, key))["status"] == "done"  # still serving
