"""Fault injection with the real agent process (and real sshd): kills, full and read-only disks, cut
connections, concurrent pushes, symlinks, budgets. Every case: each job ends done/failed with a reason,
``current`` stays valid and runs, the user sees one clear line and no traceback."""

from __future__ import annotations

import faulthandler
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.device.agent.spool import Spool
from edgekit.host.ship.bundle import manifest_bytes
from edgekit.host.ship.keys import sign

from .conftest import EDGEKIT, run_cli
from .faults import (
    CuttingProxy,
    current_problem,
    device_problems,
    kill_trials,
    quick,
    record,
    tmpfs,
    trial,
    wait_final,
)
from .sshd import device_root
from .test_agent import prepare, publish, start_agent

pytestmark = pytest.mark.slow


@pytest.fixture
def local(project):
    """A prepared local agent root (blobs uploaded, key trusted) with a quick-benchmark manifest."""
    transport, manifest, key = prepare(project)
    yield transport, quick(manifest), key
    transport.close()


def test_sigkill_at_random_points_never_leaves_a_job_unfinished(local):
    transport, manifest, key = local
    rng = random.Random(13)
    trials = kill_trials(transport.spool, start_agent, lambda: publish(transport, manifest, key), 20, rng,
                         max_delay=1.5)
    for one in trials:
        record(one.scenario, one.ok, one.detail)
    failed = [t.detail for t in trials if not t.ok]
    assert not failed, failed
    events = "".join(p.read_text() for p in transport.spool.jobs.glob("*/events.jsonl"))
    assert "stopped the agent" not in events and "giving up" not in events  # outside kills never blame a job


def test_over_budget_fails_on_the_device_and_keeps_current(local):
    with trial("over budget: job fails on the device, current kept"):
        transport, manifest, key = local
        spool = transport.spool
        agent = start_agent(spool.root)
        try:
            assert wait_final(spool, publish(transport, manifest, key))["status"] == "done"
            before = spool.current("tiny")
            tight = dict(manifest, budget={"max_p99_ms": 1e-6})
            tight["host"] = dict(tight["host"], graphs={})  # a different bundle, so a different engine key
            report = wait_final(spool, publish(transport, tight, key, manifest_bytes(tight),
                                               sign(key, manifest_bytes(tight))))
            assert report["status"] == "failed" and "over budget: batch 1: p99" in report["error"]
            assert "budget.max_p99_ms 1e-06" in report["error"] and report["budget_failures"]
            assert spool.current("tiny") == before and not device_problems(spool)
            low = dict(manifest, budget={"min_host_accuracy": 1.01})
            report = wait_final(spool, publish(transport, low, key))
            assert report["status"] == "failed" and "budget.min_host_accuracy" in report["error"]
            assert "nothing was built" in report["error"] and spool.current("tiny") == before
        finally:
            agent.kill()
            agent.wait()


def test_symlinks_and_absurd_sizes_are_refused_and_good_blobs_kept(local, tmp_path):
    with trial("symlinked spool entries and absurd sizes refused"):
        transport, manifest, key = local
        spool = transport.spool
        agent = start_agent(spool.root)
        try:
            assert wait_final(spool, publish(transport, manifest, key))["status"] == "done"
            before = spool.current("tiny")
            outside = tmp_path / "outside-job"  # a complete, validly signed job, but reached through a symlink
            outside.mkdir()
            (outside / "manifest.json").write_bytes(manifest_bytes(manifest))
            (outside / "manifest.sig").write_bytes(sign(key, manifest_bytes(manifest)))
            os.symlink(outside, spool.queue / "20300101T000000-aaaaaa")
            deadline = time.monotonic() + 20
            while os.path.lexists(spool.queue / "20300101T000000-aaaaaa") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.lexists(spool.queue / "20300101T000000-aaaaaa")
            assert sorted(p.name for p in outside.iterdir()) == ["manifest.json", "manifest.sig"]
            assert not (spool.jobs / "20300101T000000-aaaaaa").exists()

            huge = json.loads(manifest_bytes(manifest))
            entry = next(e for e in huge["files"] if e["name"] == "model.onnx")
            entry["size"] = 10 ** 15
            report = wait_final(spool, publish(transport, huge, key))
            assert report["status"] == "failed" and "inconsistent" in report["error"]
            assert spool.has_blob(entry["sha256"])  # the good shared blob stays

            blob = spool.blob(entry["sha256"])
            target = tmp_path / "elsewhere.onnx"
            shutil.move(blob, target)
            os.symlink(target, blob)
            report = wait_final(spool, publish(transport, manifest, key))
            assert report["status"] == "failed" and "symlink" in report["error"] and target.exists()
            assert spool.current("tiny") == before and not device_problems(spool)
            shutil.move(target, blob) if not blob.exists() else None
            assert wait_final(spool, publish(transport, manifest, key))["status"] == "done"  # still serving
        finally:
            agent.kill()
            agent.wait()


def test_a_runtime_crashing_the_worker_is_dropped_by_auto_and_the_job_finishes(local, monkeypatch):
    """OpenVINO segfaulted converting a user's DenseNet: under ``auto`` the other runtime must take over."""
    from edgekit.device.agent import daemon as agent
    from edgekit.device.backends import available
    from edgekit.device.contract.model_files import AUTO, candidates
    from edgekit.device.jobs import prepare
    from edgekit.device.jobs.runner import JobRunner

    scenario = "a runtime crashes the worker (SIGSEGV) under auto: dropped, job done"
    transport, manifest, key = local
    names = candidates(AUTO, available())
    if len(names) < 2:
        record(scenario, None, "one CPU runtime only")
        pytest.skip(f"auto has one runtime here ({names}): nothing to fall back to")
    with trial(scenario):
        spool, crashing = transport.spool, names[0]
        original = prepare.prepare_one

        def prepare_one(job, manifest_, files, backend, options, cpu):  # a native crash in the runtime
            if backend.name == crashing:
                faulthandler.disable()  # pytest's handler would print a "Fatal Python error" dump for the crash we want
                os.kill(os.getpid(), signal.SIGSEGV)
            return original(job, manifest_, files, backend, options, cpu)

        monkeypatch.setattr(prepare, "prepare_one", prepare_one)
        job = publish(transport, dict(manifest, target=dict(manifest["target"], backend="auto")), key)
        assert agent.take(spool, job)
        agent.supervise(spool, JobRunner(spool), job, set())  # forks the worker, as the agent does
        report = spool.report(job)
        assert report["status"] == "done" and report["backend"] != crashing, report
        dropped = next(c for c in report["auto"]["candidates"] if c["backend"] == crashing)
        assert dropped["reason"] == "crashed the job's worker (SIGSEGV) on this model" and not dropped["passed"]
        events = (spool.jobs / job / "events.jsonl").read_text()
        # a candidate is a (runtime, precision): each of the crashing runtime's is named and dropped
        assert f"auto: {crashing} " in events and "crashed the job's worker (SIGSEGV)" in events
        assert "restarted" not in events
        assert not device_problems(spool)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (root only): the device's disk, to be filled up or made read-only."""
    with tmpfs(tmp_path / "small", "24m", "full and read-only disk: job fails, agent keeps serving") as mount:
        yield mount


def fill(folder: Path) -> Path:
    """Write until the disk is full to the last byte (unbuffered); returns the filler to delete."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def remount_read_only(mount: Path, wait_s: float = 20.0) -> None:
    """``mount -o remount,ro``, retried while a file is still open for writing (a killed agent's worker is
    reaped asynchronously on a loaded machine: "mount point is busy")."""
    deadline = time.monotonic() + wait_s
    while True:
        done = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        assert "busy" in done.stderr and time.monotonic() < deadline, done.stderr
        time.sleep(0.5)


def test_a_full_or_read_only_disk_fails_the_job_and_the_agent_keeps_serving(project, small_disk):
    with trial("full and read-only disk: job fails, agent keeps serving"):
        from edgekit.host.ship.transports.local import LocalTransport

        transport, manifest, key = prepare(project)
        manifest = quick(manifest)
        root = small_disk / "root"
        small = LocalTransport(str(root))
        small.trust(transport.fs.read("trusted_keys").decode().strip())
        for entry in manifest["files"]:
            shutil.copy(transport.spool.blob(entry["sha256"]), small.spool.blob(entry["sha256"]))
        (root / "config.json").write_text('{"min_free_mb": 0}')
        spool = small.spool
        agent = start_agent(root)
        try:
            assert wait_final(spool, publish(small, manifest, key))["status"] == "done"
            before = spool.current("tiny")
            agent.kill()
            agent.wait()
            job = publish(small, dict(manifest, model="tiny2"), key, manifest_bytes(dict(manifest, model="tiny2")),
                          sign(key, manifest_bytes(dict(manifest, model="tiny2"))))
            filler = fill(small_disk)
            agent = start_agent(root)
            report = wait_final(spool, job)
            assert report["status"] == "failed" and "disk is full" in report["error"], report
            assert agent.poll() is None and spool.current("tiny") == before
            filler.unlink()
            assert wait_final(spool, publish(small, manifest, key))["status"] == "done"  # the agent kept serving

            agent.kill()  # a busy file system cannot be remounted read-only; the agent meets it at start
            agent.wait()
            job = publish(small, manifest, key)
            remount_read_only(small_disk)
            try:
                agent = start_agent(root, project / "agent-ro.log")
                time.sleep(2.0)  # it cannot claim the job nor beat its heart: it must neither die nor spin
                assert agent.poll() is None and (root / "queue" / job).is_dir()
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
            assert wait_final(spool, job)["status"] == "done"
            assert wait_final(spool, publish(small, manifest, key))["status"] == "done"
            assert agent.poll() is None and not device_problems(spool)
        finally:
            agent.kill()
            agent.wait()
            small.close()
            transport.close()


@pytest.fixture
def failing_disk(tmp_path):
    """The device's disk as a FUSE pass-through (tests/eio_fs.py) that answers EIO under the paths written to
    ``control``: a real kernel errno for the agent, root only (the mount), skipped visibly otherwise."""
    scenario = "EIO from the disk: job fails with its reason, agent keeps serving"
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        record(scenario, None, "not root or no /dev/fuse")
        pytest.skip("a FUSE mount needs root and /dev/fuse: the EIO cases are skipped")
    try:
        import mfusepy  # noqa: F401 - loads libfuse3
    except (ImportError, OSError, EnvironmentError) as exc:
        record(scenario, None, f"no FUSE binding: {exc}")
        pytest.skip(f"mfusepy/libfuse3 unavailable ({exc}): the EIO cases are skipped")
    backing, mount, control = tmp_path / "backing", tmp_path / "disk", tmp_path / "eio-paths"
    backing.mkdir()
    mount.mkdir()
    log = open(tmp_path / "eio_fs.log", "ab")
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("eio_fs.py")), str(backing), str(mount),
                               str(control)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not os.path.ismount(mount):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            record(scenario, None, "FUSE mount failed")
            pytest.skip(f"the FUSE mount failed: {(tmp_path / 'eio_fs.log').read_text()[-300:]}")
        time.sleep(0.05)
    yield mount, control
    control.unlink(missing_ok=True)
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def test_an_io_error_fails_the_job_with_one_line_and_the_agent_keeps_serving(project, failing_disk):
    with trial("EIO from the disk: job fails with its reason, agent keeps serving"):
        from edgekit.host.ship.transports.local import LocalTransport

        mount, control = failing_disk
        transport, manifest, key = prepare(project)
        manifest = quick(manifest)
        root = mount / "root"
        disk = LocalTransport(str(root))
        disk.trust(transport.fs.read("trusted_keys").decode().strip())
        for entry in manifest["files"]:
            shutil.copy(transport.spool.blob(entry["sha256"]), disk.spool.blob(entry["sha256"]))
        spool = disk.spool

        def variant(n: int) -> dict:  # a new build option: a new engine to write
            return dict(manifest, target=dict(manifest["target"], build=dict(manifest["target"]["build"], eio_trial=n)))

        agent = start_agent(root, project / "agent-eio.log")
        try:
            assert wait_final(spool, publish(disk, manifest, key))["status"] == "done"
            before = spool.current("tiny")
            control.write_text("/root/engines/\n/root/models/\n")  # the build's output fails, the job folder works
            report = wait_final(spool, publish(disk, variant(1), key))
            assert report["status"] == "failed" and "I/O error on the device's storage" in report["error"], report
            assert "\n" not in report["error"] and "Traceback" not in report["error"]
            assert agent.poll() is None and spool.current("tiny") == before

            rng = random.Random(5)
            for n in range(2, 5):  # the whole disk fails for 2 s at a random point of a job, then recovers
                job = publish(disk, variant(n), key)
                time.sleep(rng.uniform(0.0, 1.5))
                control.write_text("/\n")
                time.sleep(2.0)
                control.unlink()
                assert agent.poll() is None  # the agent neither died nor gave up on the disk
                final = wait_final(spool, job)
                assert final["status"] == "done" or "storage" in final.get("error", ""), final
            assert wait_final(spool, publish(disk, variant(9), key))["status"] == "done"  # serving again
            assert agent.poll() is None and not device_problems(spool)
        finally:
            control.unlink(missing_ok=True)
            agent.kill()
            agent.wait()
            disk.close()
            transport.close()


def test_five_concurrent_cold_cache_pushes_all_get_their_own_report(project):
    with trial("5 concurrent cold-cache pushes of one project"):
        for folder in (project / ".edgekit",):
            shutil.rmtree(folder, ignore_errors=True)
        pushes = [subprocess.Popen([EDGEKIT, "push", "local", "--json"], cwd=project, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(5)]
        outcomes = [p.communicate(timeout=900) + (p.returncode,) for p in pushes]
        jobs = set()
        for out, err, code in outcomes:
            assert code == 0 and "Traceback" not in err, err[-2000:]
            report = json.loads(out)["report"]
            assert report["status"] == "done"
            jobs.add(report["job"])
        assert len(jobs) == 5
        spool = Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device")
        assert not device_problems(spool) and not list(spool.blobs.glob("*.part"))


# -- SSH: cut connections --------------------------------------------------------------------------------
BLOBS_OK = "cd {root}/blobs && for f in $(ls | grep -v '\\.part$'); do echo $f $(sha256sum $f | cut -c1-64); done"


@pytest.mark.ssh
def test_cut_connections_mid_upload_and_mid_follow_give_one_line_and_resume(ssh_device, ssh_lab, monkeypatch):
    import base64

    import paramiko

    from edgekit.host.config import load_config
    from edgekit.host.errors import CheckFailed
    from edgekit.host.ship.push import push
    from edgekit.host.ship.session import UploadProgress
    from edgekit.host.ship.transports.connect import resolve, trust_host_key
    from edgekit.host.ship.transports.ssh import SSHTransport

    project, env, server = ssh_device
    for name in ("HOME", "EDGEKIT_HOME", "SSH_AUTH_SOCK"):
        monkeypatch.setenv(name, env[name])
    proxy = CuttingProxy(server.port)
    kind, blob = server.host_key.with_suffix(".pub").read_text().split()[:2]
    trust_host_key(resolve("127.0.0.1", None, proxy.port), paramiko.Ed25519Key(data=base64.b64decode(blob)))
    config_path = project / "deploy.toml"
    original = config_path.read_text()
    config_path.write_text(original + f'\n[devices.cut]\nhost = "127.0.0.1"\nport = {proxy.port}\n'
                                      f'user = "{ssh_lab.user}"\n'
                                      f'root = "{device_root("jet")}"\nvenv = "{device_root("venv")}"\n')

    class CutMidUpload(UploadProgress):
        def __init__(self, after: int) -> None:
            self.after, self.sent = after, 0

        def advance(self, sent_bytes: int) -> None:
            self.sent += sent_bytes
            if self.sent >= self.after and self.after:
                self.after = 0
                proxy.cut()

    rng = random.Random(7)
    messages = []
    try:
        config = load_config(config_path)
        for trial_index in range(10):
            device = SSHTransport("cut", config.device("cut"))
            device.run(f"rm -f {device.root}/blobs/*")  # every upload trial starts with an empty store
            device.close()
            follow_cut = trial_index % 2 == 1
            published: list[str] = []

            def on_event(event: dict, follow_cut: bool = follow_cut, published: list = published) -> None:
                if follow_cut and not published:
                    published.append(event["message"])
                    proxy.cut()

            progress = None if follow_cut else CutMidUpload(rng.randint(1, 150_000))
            scenario = "cut SSH connection mid-follow" if follow_cut else "cut SSH connection mid-upload"
            with trial(scenario, f"trial {trial_index}"):
                with pytest.raises(CheckFailed) as cut:
                    push(config, "cut", lambda m: None, on_event, progress)
                message = str(cut.value)
                messages.append(message)
                assert "\n" not in message and message.startswith("lost the connection to cut"), message
                if follow_cut:
                    assert "while following job" in message and "`edgekit status cut" in message, message
                    status = run_cli("status", "cut", "--json", cwd=project, env=env)  # the newest job
                    assert status.returncode == 0, status.stderr
                    assert json.loads(status.stdout)["job"] in message
                else:
                    assert "push again: the upload resumes where it stopped" in message, message
                    again, _ = push(config, "cut", lambda m: None, lambda e: None)
                    assert again["status"] == "done"
                check = SSHTransport("jet", config.device("jet"))
                try:
                    out = check.run(BLOBS_OK.format(root=check.root))[1]
                    assert all(a == b for a, b in (line.split() for line in out.splitlines())), out
                finally:
                    check.close()
        assert proxy.cuts >= 10 and len(messages) == 10
        spool_states = SSHTransport("jet", config.device("jet"))
        try:
            states = spool_states.run(f"cat {spool_states.root}/jobs/*/state.json")[1]
        finally:
            spool_states.close()
        assert '"running"' not in states and '"claimed"' not in states
    finally:
        proxy.close()
        config_path.write_text(original)
        tidy = SSHTransport("jet", load_config(config_path).device("jet"))
        try:  # leave the shared device as the other SSH tests expect it: no blobs yet
            tidy.run(f"rm -f {tidy.root}/blobs/*")
        finally:
            tidy.close()


def test_current_problem_detects_a_broken_engine(tmp_path):
    spool = Spool(tmp_path / "root").ensure()
    engine = spool.engines / "k"
    engine.mkdir()
    (spool.models / "tiny").mkdir()
    os.symlink("../../engines/k", spool.models / "tiny" / "current")
    assert "no engine.json" in current_problem(spool, "tiny")
