"""Disk management, budgets, spool hygiene, the local device's root and the systemd unit: fast, no training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edgekit.device.agent.spool import Spool
from edgekit.device.agent.store import Item, StoreConfig, collect, plan_removals
from edgekit.device.contract.budget import budget_failures
from edgekit.device.contract.protocol import part_name

from .conftest import AGENT, run_cli

MB = 1024 * 1024


def test_budget_names_each_limit_crossed():
    benches = [{"batch": 1, "latency_ms": {"p99": 2.0, "median": 1.0}},
               {"batch": 8, "latency_ms": {"p99": 9.0, "median": 5.0}}]
    failures = budget_failures({"max_p99_ms": 3.0, "max_median_ms": 4.0, "min_host_accuracy": 0.9}, benches,
                               {"fp32": 0.95, "int8": 0.85})
    assert failures == ["host top-1 0.8500 < budget.min_host_accuracy 0.9",
                        "batch 8: p99 9.000 ms > budget.max_p99_ms 3.0",
                        "batch 8: median 5.000 ms > budget.max_median_ms 4.0"]
    assert budget_failures({}, benches, {"fp32": 0.1}) == []


def test_plan_removals_is_lru_and_spares_protected_and_fresh_items():
    now = 10_000.0
    items = [Item("blob", Path(f"/b{i}"), 10 * MB, now - 5000 + i) for i in range(5)]
    items.append(Item("blob", Path("/fresh"), 10 * MB, now - 1))
    config = StoreConfig(store_limit_mb=25, min_free_mb=0, grace_s=600)
    chosen = plan_removals(items, {Path("/b0")}, store_bytes=60 * MB, free_bytes=100 * MB, config=config,
                           need_bytes=0, now=now)
    assert [i.path.name for i in chosen] == ["b1", "b2", "b3", "b4"]  # b0 protected, fresh within grace
    floor = plan_removals(items, set(), store_bytes=0, free_bytes=5 * MB, config=StoreConfig(min_free_mb=10),
                          need_bytes=0, now=now)
    assert [i.path.name for i in floor] == ["b0"]


def _engine(spool: Spool, key: str, job: str, size: int = MB) -> Path:
    folder = spool.engines / key
    folder.mkdir()
    (folder / "model.ort.onnx").write_bytes(b"\0" * size)
    (folder / "engine.json").write_text(json.dumps({"job": job}))
    return folder


def _job(spool: Spool, job: str, blobs: list[str], engine: str | None = None) -> None:
    folder = spool.jobs / job
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": [{"sha256": s} for s in blobs]}))
    (folder / "state.json").write_text(json.dumps({"status": "done"}))
    (folder / "report.json").write_text(json.dumps({"status": "done", "engine_key": engine}))


def test_collect_keeps_current_previous_and_recent_jobs_and_removes_the_rest(tmp_path):
    spool = Spool(tmp_path / "root").ensure()
    old = time.time() - 7200
    for name in ("a" * 64, "b" * 64, "c" * 64):
        (spool.blobs / name).write_bytes(b"\0" * MB)
    current = _engine(spool, "e1", "job1")
    _engine(spool, "e2", "job2")
    _engine(spool, "e3", "job3")
    _job(spool, "job1", ["a" * 64], "e1")
    _job(spool, "job2", ["b" * 64], "e2")
    _job(spool, "job3", ["c" * 64], "e3")
    (spool.models / "m").mkdir()
    os.symlink(os.path.relpath(current, spool.models / "m"), spool.models / "m" / "current")
    for path in list(spool.blobs.iterdir()) + list(spool.engines.iterdir()):
        os.utime(path, (old, old))
    (spool.blobs / f"{'d' * 64}.w1.part").write_bytes(b"x")
    os.utime(spool.blobs / f"{'d' * 64}.w1.part", (old, old))
    result = collect(spool, StoreConfig(store_limit_mb=0.5, min_free_mb=0, keep_jobs=1))
    assert sorted(p.name for p in spool.jobs.iterdir()) == ["job1", "job3"]  # job1 built current
    assert (spool.engines / "e1").is_dir() and (spool.engines / "e3").is_dir()
    assert not (spool.engines / "e2").exists() and not (spool.blobs / ("b" * 64)).exists()
    assert (spool.blobs / ("a" * 64)).exists() and (spool.blobs / ("c" * 64)).exists()
    assert not list(spool.blobs.glob("*.part")) and result["freed_bytes"] >= 2 * MB


def test_agent_gc_command_saves_settings_and_says_whether_a_push_fits(tmp_path):
    root = tmp_path / "root"
    done = subprocess.run([AGENT, "gc", "--root", str(root), "--min-free-mb", "1", "--need", str(10 ** 15)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["fits"] is False and answer["config"]["min_free_mb"] == 1
    assert json.loads((root / "config.json").read_text()) == {"min_free_mb": 1.0}


def test_queue_symlinks_are_refused_and_never_followed(tmp_path):
    spool = Spool(tmp_path / "root").ensure()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    os.symlink(outside, spool.queue / "20260101T000000-abcdef")
    (spool.queue / "20260101T000001-abcdef").mkdir()
    assert spool.queued() == ["20260101T000001-abcdef"]
    assert [p.name for p in spool.foreign_entries()] == ["20260101T000000-abcdef"]


def test_stale_parts_are_swept_and_fresh_ones_kept(tmp_path):
    spool = Spool(tmp_path / "root").ensure()
    stale, fresh = spool.blobs / part_name("a" * 64, "w1"), spool.blobs / part_name("a" * 64, "w2")
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    (spool.incoming / "job.part").mkdir()
    os.utime(spool.incoming / "job.part", (time.time() - 7200, time.time() - 7200))
    assert sorted(spool.sweep_parts(900)) == sorted(["job.part", stale.name])
    assert fresh.exists()


def test_declaring_local_keeps_the_local_devices_root(tmp_path, monkeypatch):
    from edgekit.host.config import deploy_toml, load_config

    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    base = dict(project={"name": "p"}, model={"arch": "resnet20", "checkpoint": "x.pt"}, data={"path": "d"})
    (tmp_path / "a.toml").write_text(deploy_toml(**base))
    (tmp_path / "b.toml").write_text(deploy_toml(**base, devices={"local": {"kind": "local", "precision": "int8"}}))
    (tmp_path / "c.toml").write_text(deploy_toml(**base, devices={"local": {"kind": "local", "root": "/srv/x"}}))
    implicit = load_config(tmp_path / "a.toml").device("local")
    declared = load_config(tmp_path / "b.toml").device("local")
    assert implicit.root == declared.root == str(tmp_path / "home" / "local-device")
    assert declared.precision == "int8" and load_config(tmp_path / "c.toml").device("local").root == "/srv/x"


def test_messages_keep_their_square_brackets(tmp_path):
    assert run_cli("init", str(tmp_path), cwd=tmp_path).returncode == 0
    result = run_cli("push", "nosuch", cwd=tmp_path)
    assert result.returncode == 2 and "no device 'nosuch' under [devices]" in result.stderr


@pytest.mark.parametrize("system", [True, False])
def test_the_unit_passes_systemd_analyze_verify_and_has_no_start_limit(tmp_path, system):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (make test installs Debian's systemd when root)")
    unit = tmp_path / "edgekit-agent.service"
    args = [AGENT, "install-service", "--root", str(tmp_path / "root"), "--output", str(unit)]
    subprocess.run(args + (["--system", "--user", "root"] if system else []), check=True)
    text = unit.read_text()
    assert "StartLimitIntervalSec=0" in text and "RestartPreventExitStatus=2" in text
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ExecStart=/", "ExecStart=nonexistent-"))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True).returncode != 0


def test_benchmark_settings_out_of_bounds_fail_the_job_with_the_key():
    from edgekit.device.errors import JobError
    from edgekit.device.jobs.measure import benchmark_plan

    assert benchmark_plan({"duration_s": 0.5}).duration_s == 0.5
    for bad in ({"duration_s": 1e9}, {"min_iterations": "many"}, {"warmup_s": True}):
        with pytest.raises(JobError, match="manifest target.benchmark"):
            benchmark_plan(bad)


def test_storage_errors_read_as_one_line_with_what_to_do():
    import errno

    from edgekit.device.errors import device_error

    full = device_error(OSError(errno.ENOSPC, "No space left on device"), "building the engine")
    assert full.startswith("device storage error while building the engine: No space left on device; the device's")
    assert "disk is full" in full and "\n" not in full
    assert "read-only" in device_error(OSError(errno.EROFS, "Read-only file system"), "x")
