"""Fault injection against a real agent process: the scenarios, shared by tests/test_faults.py and
benchmarks/faults.py (which prints the counts as a table).

Every scenario returns one ``Trial`` per injected fault; a trial passes when every job ended ``done``
or ``failed`` with a reason, ``current`` points at an engine that loads and runs, and what the user saw
was one clear line (no traceback).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from edgekit.device.agent.spool import Spool, read_json
from edgekit.device.contract.protocol import TERMINAL_STATES

# Benchmarks as short as still measure something: the faults are the point here, not the latency.
QUICK_BENCHMARK = {"warmup_s": 0.01, "duration_s": 0.03, "min_iterations": 3, "cv_warn_percent": 1000.0}


@dataclass
class Trial:
    scenario: str
    ok: bool
    detail: str


def quick(manifest: dict) -> dict:
    manifest["target"]["benchmark"] = dict(manifest["target"]["benchmark"], **QUICK_BENCHMARK)
    return manifest


def device_problems(spool: Spool, model: str = "tiny", wait: float = 60.0) -> list[str]:
    """What is wrong with a spool after faults: unfinished jobs, jobs without a reason, a broken ``current``."""
    deadline = time.monotonic() + wait
    problems: list[str] = []
    while True:
        problems = []
        for folder in sorted(p for p in spool.jobs.iterdir() if p.is_dir()):
            state = read_json(folder / "state.json") or {}
            report = read_json(folder / "report.json")
            if state.get("status") not in TERMINAL_STATES or report is None:
                problems.append(f"job {folder.name} is {state.get('status', 'without state')}")
            elif report["status"] == "failed" and not report.get("error"):
                problems.append(f"job {folder.name} failed without a reason")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    problem = current_problem(spool, model)
    return problems + ([problem] if problem else [])


def current_problem(spool: Spool, model: str) -> Optional[str]:
    """None when ``current`` loads and runs an inference (benchmarkable), else what is wrong."""
    from edgekit.device.backends import get_backend

    link = spool.models / model / "current"
    if not link.is_symlink():
        return None if not (spool.models / model).exists() else f"{model}/current is not a symlink"
    engine = link.resolve()
    meta = read_json(engine / "engine.json")
    if meta is None:
        return f"{model}/current points at {engine}, which has no engine.json"
    try:
        loaded = get_backend(meta.get("backend", "onnxruntime")).load(engine, meta)
        out = loaded.run(np.zeros((1, 3, 32, 32), dtype=np.float32))
        loaded.close()
    except Exception as exc:  # noqa: BLE001 - any failure to run is the finding
        return f"{model}/current does not run: {type(exc).__name__}: {exc}"
    return None if out.shape[0] == 1 else f"{model}/current gave output shape {out.shape}"


def one_clear_line(stderr: str) -> Optional[str]:
    """None when the user saw exactly one error line and no traceback; else what they saw instead."""
    if "Traceback" in stderr or "Aborted" in stderr:
        return "traceback/abort: " + stderr.strip().splitlines()[-1][:200]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    return None if len(errors) == 1 else f"{len(errors)} error lines: {stderr.strip()[-300:]}"


def wait_final(spool: Spool, job: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_json(spool.jobs / job / "state.json") or {}
        if state.get("status") in TERMINAL_STATES and (spool.jobs / job / "report.json").exists():
            return spool.report(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish")


# -- SIGKILL at random points ---------------------------------------------------------------------------
def kill_trials(spool: Spool, start_agent: Callable[[Path], subprocess.Popen], publish: Callable[[], str],
                trials: int, rng: random.Random, max_delay: float = 2.0) -> list[Trial]:
    """Publish a job, SIGKILL the agent after a random delay, restart it: the job must end by itself."""
    results = []
    for index in range(trials):
        process = start_agent(spool.root)
        job = publish()
        time.sleep(rng.uniform(0.0, max_delay))
        process.kill()
        process.wait()
        restarted = start_agent(spool.root)
        try:
            report = wait_final(spool, job)
            problems = device_problems(spool)
        finally:
            restarted.kill()
            restarted.wait()
        ok = report["status"] == "done" and not problems
        results.append(Trial("SIGKILL at a random point", ok, f"trial {index}: {report['status']} "
                                                               f"{report.get('error', '')} {problems}".strip()))
    return results


# -- a TCP proxy whose connections can be cut ----------------------------------------------------------
class CuttingProxy:
    """127.0.0.1:port → the device's sshd; ``cut()`` drops every live connection at once, like a lost link."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.live: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.live += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            for data in iter(lambda: source.recv(65536), b""):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            live, self.live = self.live, []
        self.cuts += 1
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.cut()
        self.listener.close()


LOG_VARIABLE = "EDGEKIT_FAULTS_LOG"  # benchmarks/faults.py sets it to collect every trial's outcome


def record(scenario: str, ok: Optional[bool], detail: str = "") -> None:
    """Append one outcome (True passed, False failed, None skipped) to the faults log, when one is kept."""
    path = os.environ.get(LOG_VARIABLE)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"scenario": scenario, "ok": ok, "detail": detail[:500]}) + "\n")


@contextmanager
def trial(scenario: str, detail: str = "") -> Iterator[None]:
    """Record the enclosed check as one trial: passed, failed (with why) or skipped."""
    import pytest

    try:
        yield
    except pytest.skip.Exception as exc:
        record(scenario, None, str(exc))
        raise
    except BaseException as exc:
        record(scenario, False, f"{detail}: {type(exc).__name__}: {exc}")
        raise
    record(scenario, True, detail)


def summary(trials: list[Trial]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for trial in trials:
        row = table.setdefault(trial.scenario, {"passed": 0, "total": 0, "failures": []})
        row["total"] += 1
        row["passed"] += int(trial.ok)
        if not trial.ok:
            row["failures"].append(trial.detail)
    return table


def dump(path: Path, trials: list[Trial]) -> None:
    path.write_text(json.dumps(summary(trials), indent=2))


def env_with(**extra: str) -> dict[str, str]:
    return dict(os.environ, **extra)


@contextmanager
def tmpfs(folder: Path, size: str, scenario: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (root only; else the scenario is recorded skipped), unmounted after."""
    import pytest

    if os.geteuid() != 0 or shutil.which("mount") is None:
        record(scenario, None, "not root")
        pytest.skip("mounting a small tmpfs needs root: the full-disk cases are skipped")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        record(scenario, None, "no tmpfs")
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): full-disk cases skipped")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
