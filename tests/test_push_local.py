"""`edgekit push local` end to end through the real CLI: agent process, ONNX Runtime, real digits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgekit.device.agent.spool import Spool

from .conftest import run_cli

pytestmark = pytest.mark.slow


def push(project: Path, *extra: str):
    result = run_cli("push", "local", "--json", *extra, cwd=project)
    data = json.loads(result.stdout) if result.stdout.strip() else None
    return result, data


def local_spool() -> Spool:
    return Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device")


def test_push_twice_reuses_the_optimised_model_and_the_engine(project):
    first, data = push(project)
    assert first.returncode == 0, first.stderr
    report = data["report"]
    assert report["status"] == "done" and report["validation"]["passed"]
    assert not data["optimize"]["cached"] and not report["engine_reused"]
    assert [row["batch"] for row in data["rows"]] == [1, 8] and all(row["p99_ms"] > 0 for row in data["rows"])
    assert {"trained (FP32 baseline)", "ONNX FP32 (BN folded)"} <= set(report["host"]["accuracy"])

    second, again = push(project)
    assert second.returncode == 0, second.stderr
    assert again["optimize"]["cached"] and again["report"]["engine_reused"]
    assert again["report"]["uploaded_bytes"] == 0
    assert "no host work needed" in second.stderr
    events = (local_spool().jobs / again["report"]["job"] / "events.jsonl").read_text()
    assert "reusing cached engine" in events
    # auto races the runtimes again and may pick the other one this time; only its baseline is new then
    assert all("baseline" in line for line in events.splitlines() if "building" in line)

    table = run_cli("report", cwd=project)  # the last run: the second push, whose race may have picked the other
    assert table.returncode == 0 and "passed" in table.stdout
    assert f"{again['report']['backend']} (auto)" in table.stdout, (again["report"]["backend"], table.stdout)
    compared = run_cli("compare", "--json", cwd=project)
    assert compared.returncode == 0 and [r["batch"] for r in json.loads(compared.stdout)["rows"]] == [1, 8]


def test_a_corrupted_file_on_the_device_fails_the_push_and_keeps_current(project):
    assert push(project)[0].returncode == 0
    spool = local_spool()
    before = spool.current("tiny")
    blob = max(spool.blobs.iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(b"\0" * blob.stat().st_size)
    failed = run_cli("push", "local", cwd=project)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "corrupted on the device" in error_lines[0]
    assert spool.current("tiny") == before
    healed, data = push(project)  # the corrupt blob was dropped, so it is uploaded again
    assert healed.returncode == 0 and data["report"]["uploaded_bytes"] > 0


def test_a_wrong_input_shape_is_one_line_and_the_device_is_untouched(project):
    assert push(project)[0].returncode == 0
    before = local_spool().current("tiny")
    config = project / "deploy.toml"
    config.write_text(config.read_text().replace("[input]", "[input]\nshape = [3, 48, 48]"))
    result = run_cli("push", "local", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "input.shape [3, 48, 48] does not match" in result.stderr and result.stderr.count("\n") == 1
    assert local_spool().current("tiny") == before


def test_status_reattaches_to_the_last_job_and_missing_data_names_the_key(project):
    first, data = push(project)
    assert first.returncode == 0
    status = run_cli("status", "local", "--json", cwd=project)
    assert status.returncode == 0 and json.loads(status.stdout)["job"] == data["report"]["job"]
    unknown = run_cli("status", "local", "20990101T000000-abcdef", cwd=project)
    assert unknown.returncode == 2 and "has no job" in unknown.stderr
    config = project / "deploy.toml"
    config.write_text(config.read_text().replace('path = "data"', 'path = "nowhere"'))
    missing = run_cli("optimize", cwd=project)
    assert missing.returncode == 2 and "data.path" in missing.stderr and "Traceback" not in missing.stderr


def test_push_survives_the_local_agent_being_killed_mid_job(project):
    import signal
    import subprocess
    import time

    from .conftest import EDGEKIT

    config = project / "deploy.toml"
    config.write_text(config.read_text().replace("duration_s = 0.2", "duration_s = 3.0"))
    pusher = subprocess.Popen([EDGEKIT, "push", "local", "--json"], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    spool, deadline = local_spool(), time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until the agent is benchmarking, then kill it
        logs = list(spool.jobs.glob("*/events.jsonl")) if spool.jobs.is_dir() else []
        if logs and "benchmarking" in logs[0].read_text():
            break
        time.sleep(0.02)
    status = json.loads((spool.root / "agent.json").read_text())
    os.kill(status["pid"], signal.SIGKILL)
    out, err = pusher.communicate(timeout=300)
    assert pusher.returncode == 0, err
    report = json.loads(out)["report"]
    assert report["status"] == "done" and report["validation"]["passed"]
    assert "agent restarted during this job" in (spool.jobs / report["job"] / "events.jsonl").read_text()
    assert json.loads((spool.root / "agent.json").read_text())["pid"] != status["pid"]


def test_upload_progress_reports_exactly_the_bytes_the_device_lacks(project):
    from edgekit.host.config import host_home, load_config
    from edgekit.host.optimize import optimize
    from edgekit.host.ship.bundle import make_manifest, manifest_bytes
    from edgekit.host.ship.keys import load_or_create_key, sign
    from edgekit.host.ship.session import UploadProgress, ship
    from edgekit.host.ship.transports.local import LocalTransport

    class Recorder(UploadProgress):
        def __init__(self):
            self.total, self.sent, self.files, self.finished = None, 0, None, False

        def start(self, total_bytes, files):
            self.total, self.files = total_bytes, files

        def advance(self, sent_bytes):
            self.sent += sent_bytes

        def finish(self):
            self.finished = True

    config = load_config(project / "deploy.toml")
    optimized = optimize(config, say=lambda m: None)
    manifest = make_manifest(config, config.device("local"), optimized.files, dict(optimized.host))
    payload = manifest_bytes(manifest)
    transport = LocalTransport(config.device("local").root)
    first, second = Recorder(), Recorder()
    signature = sign(load_or_create_key(host_home()), payload)
    ship(transport, optimized, manifest, signature, payload, lambda m: None, first)
    assert first.finished and first.files == len(manifest["files"])
    assert first.sent == first.total == sum(entry["size"] for entry in manifest["files"])
    ship(transport, optimized, manifest, signature, payload, lambda m: None, second)
    assert second.total == second.sent == 0 and second.files == 0
