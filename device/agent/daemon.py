"""``edgekit-agent serve``: the daemon that takes published jobs one at a time.

The agent itself must outlive anything a job does, so each job runs in a forked worker it supervises
(``supervise``) while it keeps the heartbeat; and a full or read-only disk only slows the loop down and
logs (``_quietly``, ``_safe``), never stops it. One agent per root, held by an flock (``AgentLock``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import __version__
from ..contract.protocol import HEARTBEAT_S, STALE_PART_S
from ..errors import ConfigError, device_error
from ..jobs.auto import AUTO_CRASHED, AUTO_TRYING, MAX_CRASHED_CANDIDATES
from ..jobs.engines import cleanup_builds
from ..jobs.runner import JobRunner
from .health import repair
from .spool import STATUS_FILE, AgentLock, Spool, log, write_atomic, write_json_atomic
from .store import collect, save_state

RESERVE = "agent.reserve"  # space kept back so a failure can still be recorded on a full disk
RESERVE_BYTES = 1024 * 1024
WORKER_FAILED = 70  # the worker could not record the job's end itself
RETRY_S = 30.0
REPAIR_S = 2.0  # how often the active models' engines are looked at (a few stat calls)
LOCK_WAIT_S = 5.0  # a killed predecessor's worker can take a moment to die (it holds the runtimes' memory)

_held: Optional[AgentLock] = None  # this agent's lock, which its forked workers must let go of


def serve(root: Path, poll: float, once: bool) -> int:
    """Serve ``root`` until killed (or, with ``once``, until the queue is empty); 0 also when another agent
    already serves it, so a second start (systemd and a host's local device) is no failure."""
    spool = Spool(root)
    try:
        spool.ensure()
    except OSError as exc:
        raise ConfigError("cannot use agent root {}: {}".format(root, exc)) from None
    global _held
    lock = AgentLock(spool)  # held for the agent's life: closing it would release the root
    if not lock.acquire(wait=LOCK_WAIT_S):
        log("another agent already serves {}; exiting".format(spool.root))
        return 0
    _held = lock
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _start(spool)
    runner = JobRunner(spool, log)
    log("serving {} (version {}, pid {})".format(spool.root, __version__, os.getpid()))
    return _loop(spool, runner, poll, once)


def _start(spool: Spool) -> None:
    """Say who serves the root, and clear what a killed predecessor left (half builds, stale uploads)."""
    _quietly(lambda: write_json_atomic(spool.root / STATUS_FILE, {
        "pid": os.getpid(), "version": __version__, "started": time.time(), "root": str(spool.root)}))
    _quietly(spool.beat)
    _quietly(lambda: _describe(spool))
    _quietly(lambda: cleanup_builds(spool))
    _quietly(lambda: spool.sweep_parts(STALE_PART_S))
    _quietly(lambda: _after_job(spool))  # gc, and store.json, by which a push decides whether it needs one
    _quietly(lambda: _ensure_reserve(spool))
    _quietly(lambda: repair(spool, log))


_describer: Optional[subprocess.Popen[bytes]] = None
_describe_pending = False


def _describe(spool: Spool) -> None:
    """device.json (what the host chooses a bundle's files by) written by ``edgekit-agent describe`` in a process
    of its own, not here: describing TensorRT initialises CUDA, which the forked workers could then not use.
    Not waited for (importing the runtimes takes seconds); the loop reaps it."""
    global _describer
    command = [sys.executable, "-m", __name__.rpartition(".")[0] + ".main", "describe", "--root", str(spool.root)]
    _describer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)


def _loop(spool: Spool, runner: JobRunner, poll: float, once: bool) -> int:
    """Finish unfinished jobs first (at start, then every RETRY_S: also those given up), then the queue."""
    given_up = set()  # type: Set[str]  # jobs whose end could not be recorded (read-only disk): retried later
    retry_at = repair_at = 0.0
    while True:
        if time.monotonic() >= repair_at:  # an engine deleted behind `current` since the last look
            _quietly(lambda: repair(spool, log))
            repair_at = time.monotonic() + REPAIR_S
        if time.monotonic() >= retry_at:
            given_up.clear()
            for job in _safe(spool.unfinished, []):
                _supervised(spool, runner, job, given_up)
            retry_at = time.monotonic() + RETRY_S
        _quietly(spool.beat)
        _quietly(lambda: _describe_when_due(spool))
        _quietly(lambda: refuse_foreign(spool))
        jobs = _safe(spool.queued, [])
        for job in jobs:
            if job in given_up or not take(spool, job):
                continue
            _supervised(spool, runner, job, given_up)
        if once and not jobs:
            return 0
        if not jobs:
            time.sleep(poll)


def _supervised(spool: Spool, runner: JobRunner, job: str, given_up: Set[str]) -> None:
    """``supervise``, except that a worker that cannot even be forked leaves the job for a later turn."""
    try:
        supervise(spool, runner, job, given_up)
    except OSError as exc:  # no worker could be started (fork: out of memory or processes)
        log("error: cannot run job {} now: {}; trying again shortly".format(job, exc))
        given_up.add(job)
        time.sleep(1.0)
        return
    _quietly(lambda: _describe_after_failure(spool, job))


def _describe_after_failure(spool: Spool, job: str) -> None:
    """device.json again after a failed job: a runtime upgraded since the agent started (TensorRT 10 to 11) fails
    the job with "push again", and the next push must then choose its files by the new runtime, not the old one.
    Not after a success, so the describing process never runs beside the benchmark of back-to-back pushes."""
    global _describe_pending
    if (spool.state(job) or {}).get("status") == "failed":
        _describe_pending = True
    _describe_when_due(spool)


def _describe_when_due(spool: Spool) -> None:
    """Reap a finished describer; start the one a failure asked for once none runs (one at a time)."""
    global _describer, _describe_pending
    if _describer is not None and _describer.poll() is not None:
        _describer = None
    if _describe_pending and _describer is None:
        _describe_pending = False
        _describe(spool)


_warned: Dict[str, float] = {}


def warn_once(message: str, every: float = 60.0) -> None:
    """Log a repeated warning once a minute, not at every turn of the loop (journald on a dying disk)."""
    now = time.monotonic()
    if now - _warned.get(message, -every) >= every:
        _warned[message] = now
        log("warning: {}".format(message))


def _quietly(step: Callable[[], Any]) -> None:
    """A housekeeping step that must not stop the agent (a full or read-only disk only logs)."""
    try:
        step()
    except OSError as exc:
        warn_once(device_error(exc, "housekeeping"))


def _safe(read: Callable[[], List[str]], default: List[str]) -> List[str]:
    """A look at the spool that cannot be made now counts as empty; the pause keeps a dead disk from spinning."""
    try:
        return read()
    except OSError as exc:
        warn_once(device_error(exc, "reading the spool"))
        time.sleep(1.0)
        return default


def refuse_foreign(spool: Spool) -> None:
    """Queue entries that are not plain job folders (a symlink could lead anywhere) are removed unfollowed."""
    for path in spool.foreign_entries():
        log("error: refused queue entry {} (not a job folder{}); removed".format(
            path.name, ", a symlink" if path.is_symlink() else ""))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(str(path), ignore_errors=True)
        else:
            path.unlink()


def take(spool: Spool, job: str) -> bool:
    """Claim a queued job; a job id that already ran is dropped (never crash the loop over one entry)."""
    if os.path.lexists(str(spool.jobs / job)):
        log("error: job id {} was published again; the duplicate is dropped".format(job))
        shutil.rmtree(str(spool.queue / job), ignore_errors=True)
        return False
    try:
        spool.claim(job)
    except OSError as exc:
        warn_once("cannot claim job {}: {}".format(job, exc))
        time.sleep(1.0)
        return False
    _quietly(lambda: spool.set_state(job, "claimed"))
    return True


def supervise(spool: Spool, runner: JobRunner, job: str, given_up: Set[str]) -> None:
    """Run the job in a forked worker so nothing it does (a crash in a runtime, a full disk) stops the agent.

    The agent keeps the heartbeat while the worker runs; it collects garbage after the job (``_after_job``).
    When the worker ends without recording a final state (killed by a signal, or unable to write), the agent
    records the failure itself, freeing space first; if even that cannot be written the job is left alone until
    the next start.
    """
    for _ in range(MAX_CRASHED_CANDIDATES + 1):
        status, note = _run_worker(spool, runner, job)
        if _safe_terminal(spool, job):
            _after_job(spool)
            return
        if not (os.WIFSIGNALED(status) and _drop_crashed_candidate(runner, job, os.WTERMSIG(status))):
            break
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        message = "the job's worker was killed by {} (a crash in the runtime, or out of memory); the active model " \
                  "was not changed".format(_signal_name(number))
    else:
        message = note or "the job's worker stopped unexpectedly (exit {})".format(os.WEXITSTATUS(status))
    record_failure(spool, runner, job, message, given_up)
    _quietly(lambda: _ensure_reserve(spool))
    _after_job(spool)


def _after_job(spool: Spool) -> None:
    """Garbage-collect, then store.json with what the job built counted: after the job, when the host has its
    report already, not between its publish and the job's start (where the host would wait for it). Room for a
    job is made by the one before it, or, when store.json says the upload might not fit, by the host's
    `edgekit-agent gc` before it uploads."""
    _quietly(lambda: collect(spool))
    _quietly(lambda: save_state(spool))


def _run_worker(spool: Spool, runner: JobRunner, job: str) -> Tuple[int, str]:
    """Fork the worker, keep the heartbeat until it ends; its wait status and what it sent up the pipe."""
    reader, writer = os.pipe()
    agent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(reader)
        _worker(runner, job, writer, agent)
    os.close(writer)
    status = _wait(spool, pid)
    with os.fdopen(reader, "rb") as pipe:
        return status, pipe.read().decode("utf-8", "replace").strip()


def _drop_crashed_candidate(runner: JobRunner, job: str, number: int) -> bool:
    """``auto`` was trying a runtime when the worker died by a signal: that runtime crashed on this model.

    Records it (``auto.crashed``) so the rerun leaves it out and says why, instead of failing the job:
    one runtime crashing must not stop the others, as one failing does not. False when no candidate was
    being tried (not an auto job, or the crash came later): the job fails as before.
    """
    try:
        trying = runner.spool.job_dir(job) / AUTO_TRYING
        name = trying.read_text().strip()
        crashed = runner.spool.job_dir(job) / AUTO_CRASHED
        known = json.loads(crashed.read_text()) if crashed.exists() else {}
        known[name] = _signal_name(number)
        write_atomic(crashed, json.dumps(known).encode("utf-8"))
        trying.unlink()
        state = runner.spool.state(job) or {}
        extra = {k: v for k, v in state.items() if k not in ("job", "status", "updated")}
        extra["attempt"] = max(0, int(extra.get("attempt", 1)) - 1)  # the rerun is no restart of the agent
        runner.spool.set_state(job, state.get("status", "running"), **extra)
        runner.event(job, "warning", "auto: {} crashed the job's worker ({}) on this model; trying the other "
                                     "runtimes".format(name, _signal_name(number)), backend=name)
    except (OSError, ValueError):
        return False
    return bool(name)


def _worker(runner: JobRunner, job: str, pipe: int, agent: int) -> None:
    """The forked child: run the job, send up the pipe why it could not end it itself, never return."""
    code = 0
    try:
        if _held is not None:
            _held.forget()
        _die_with_parent(agent)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        runner.run(job)
    except OSError as exc:
        code = WORKER_FAILED
        os.write(pipe, device_error(exc, "recording the job's result").encode("utf-8"))
    except BaseException as exc:  # noqa: BLE001 - report anything, then leave without unwinding the agent
        code = WORKER_FAILED
        log(traceback.format_exc())
        os.write(pipe, "internal error in the agent ({}: {})".format(type(exc).__name__, exc).encode("utf-8"))
    finally:
        os._exit(code)


def _wait(spool: Spool, pid: int) -> int:
    """The worker's wait status; the heartbeat goes on meanwhile, so the host sees a busy agent, not a dead one."""
    last = 0.0
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() - last >= HEARTBEAT_S:
            _quietly(spool.beat)
            last = time.monotonic()
        time.sleep(0.02)


def _die_with_parent(agent: int) -> None:
    """The worker must not outlive an agent killed from outside (Linux: PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != agent:  # the agent died before the call took effect (reparented: to 1 or a subreaper)
        os._exit(0)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal {}".format(number)


def _safe_terminal(spool: Spool, job: str) -> bool:
    """Whether the worker ended the job; a state that cannot be read counts as not ended."""
    try:
        return spool.is_terminal(job)
    except (OSError, ValueError):
        return False


def record_failure(spool: Spool, runner: JobRunner, job: str, message: str, given_up: Set[str]) -> None:
    """Fail the job on the worker's behalf; on a full disk free space (gc, then the reserve) and try again."""
    for attempt in range(3):
        try:
            runner.fail(job, message)
            return
        except OSError as exc:
            log("error: cannot record the failure of job {}: {}".format(job, exc))
            if attempt == 0:
                _quietly(lambda: collect(spool, need_bytes=RESERVE_BYTES))
            elif attempt == 1:
                _quietly(lambda: (spool.root / RESERVE).unlink())
    given_up.add(job)


def _ensure_reserve(spool: Spool) -> None:
    """Keep RESERVE_BYTES on disk that ``record_failure`` can give back when nothing else can be freed."""
    path = spool.root / RESERVE
    if not path.exists() or path.stat().st_size < RESERVE_BYTES:
        write_atomic(path, b"\0" * RESERVE_BYTES)
