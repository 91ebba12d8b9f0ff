"""``edgekit-agent``: the device daemon and its small admin commands.

argparse rather than typer: the device side must run with nothing but numpy (and the runtimes) installed.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import __version__
from ..backends import describe_all
from ..backends.tensorrt.cuda import cuda_bindings
from ..contract.service import CONFIG_ERROR_EXIT, unit_text
from ..cpu import describe_cpu
from ..errors import ConfigError, device_error
from ..jobs.runner import AUTO_CRASHED, AUTO_TRYING, MAX_CRASHED_CANDIDATES, JobRunner, cleanup_builds
from ..telemetry import describe_host
from .spool import HEARTBEAT_S, LOCK, STALE_PART_S, Spool, read_json, write_atomic, write_json_atomic
from .store import CONFIG as STORE_CONFIG
from .store import collect, load_config, save_config, usage

DEFAULT_ROOT = "~/.edgekit"
STATUS_FILE = "agent.json"


def log(message: str) -> None:
    sys.stderr.write("edgekit-agent: {}\n".format(message))
    sys.stderr.flush()


class AgentLock:
    """An flock on the root: one agent per root, and a held lock is how others see an agent is alive."""

    def __init__(self, spool: Spool) -> None:
        self.path = spool.root / LOCK
        self.handle = None  # type: Any

    def acquire(self) -> bool:
        try:
            self.handle = open(str(self.path), "a+")
        except OSError:  # a read-only root: an existing lock file can still be locked through a read handle
            self.handle = open(str(self.path))
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            self.handle = None
            return False
        return True


def agent_running(root: Path) -> bool:
    """True when some process holds the root's agent lock."""
    spool = Spool(root)
    if not (spool.root / LOCK).exists():
        return False
    probe = AgentLock(spool)
    if probe.acquire():
        probe.handle.close()
        return False
    return True


RESERVE = "agent.reserve"  # space kept back so a failure can still be recorded on a full disk
RESERVE_BYTES = 1024 * 1024
WORKER_FAILED = 70  # the worker could not record the job's end itself
RETRY_S = 30.0


def serve(root: Path, poll: float, once: bool) -> int:
    spool = Spool(root)
    try:
        spool.ensure()
    except OSError as exc:
        raise ConfigError("cannot use agent root {}: {}".format(root, exc)) from None
    lock = AgentLock(spool)
    if not lock.acquire():
        log("another agent already serves {}; exiting".format(spool.root))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _quietly(lambda: write_json_atomic(spool.root / STATUS_FILE, {
        "pid": os.getpid(), "version": __version__, "started": time.time(), "root": str(spool.root)}))
    _quietly(spool.beat)
    _quietly(lambda: cleanup_builds(spool))
    _quietly(lambda: spool.sweep_parts(STALE_PART_S))
    _quietly(lambda: _ensure_reserve(spool))
    runner = JobRunner(spool, log)
    log("serving {} (version {}, pid {})".format(spool.root, __version__, os.getpid()))
    given_up = set()  # type: Set[str]  # jobs whose end could not be recorded (read-only disk): retried later
    retry_at = 0.0
    while True:
        if time.monotonic() >= retry_at:  # at start, then now and then: unfinished jobs (also given-up ones)
            given_up.clear()
            for job in _safe(spool.unfinished, []):
                _supervised(spool, runner, job, given_up)
            retry_at = time.monotonic() + RETRY_S
        _quietly(spool.beat)
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
    try:
        supervise(spool, runner, job, given_up)
    except OSError as exc:  # no worker could be started (fork: out of memory or processes)
        log("error: cannot run job {} now: {}; trying again shortly".format(job, exc))
        given_up.add(job)
        time.sleep(1.0)


_warned = {}  # type: Dict[str, float]


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


def supervise(spool: Spool, runner: JobRunner, job: str, given_up: Set[str]) -> None:
    """Run the job in a forked worker so nothing it does (a crash in a runtime, a full disk) stops the agent.

    The agent keeps the heartbeat while the worker runs. When the worker ends without recording a
    final state (killed by a signal, or unable to write), the agent records the failure itself,
    freeing space first; if even that cannot be written the job is left alone until the next start.
    """
    _quietly(lambda: collect(spool))
    for _ in range(MAX_CRASHED_CANDIDATES + 1):
        status, note = _run_worker(spool, runner, job)
        if _safe_terminal(spool, job):
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


def _run_worker(spool: Spool, runner: JobRunner, job: str) -> Tuple[int, str]:
    """Fork the worker, keep the heartbeat until it ends; its wait status and what it sent up the pipe."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(reader)
        _worker(runner, job, writer)
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


def _worker(runner: JobRunner, job: str, pipe: int) -> None:
    code = 0
    try:
        _die_with_parent()
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


def _die_with_parent() -> None:
    """The worker must not outlive an agent killed from outside (Linux: PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the agent died before the call took effect
        os._exit(0)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal {}".format(number)


def _safe_terminal(spool: Spool, job: str) -> bool:
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
    path = spool.root / RESERVE
    if not path.exists() or path.stat().st_size < RESERVE_BYTES:
        write_atomic(path, b"\0" * RESERVE_BYTES)


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


def status(root: Path) -> Dict[str, Any]:
    spool = Spool(root)
    info = read_json(spool.root / STATUS_FILE) or {}
    models = {}
    if spool.models.is_dir():
        models = {p.name: spool.current(p.name) for p in sorted(spool.models.iterdir())}
    disk = usage(spool) if spool.blobs.is_dir() else {}
    return {
        "version": __version__, "root": str(spool.root), "running": agent_running(spool.root),
        "pid": info.get("pid"), "queued": spool.queued() if spool.queue.is_dir() else [],
        "unfinished": spool.unfinished() if spool.jobs.is_dir() else [], "models": models,
        "free_disk_bytes": disk.get("free_bytes"), "store_bytes": disk.get("store_bytes"),
        "store": vars(load_config(spool)), "backends": describe_all(), "device": describe_host(),
        "cuda": cuda_bindings(),
        "cpu": describe_cpu(),
    }


def commit_upload(root: Path, sha: str, writer: str) -> Optional[str]:
    """The upload's last step, run on the device: the hash is checked where the bytes landed. An error or None."""
    spool = Spool(root)
    try:
        part = spool.part(sha, writer)
        if spool.has_blob(sha):  # another writer committed the same content first
            if part.is_file():
                part.unlink()
            return None
        spool.commit_blob(sha, part)
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return device_error(exc, "storing an upload")
    return None


def gc(root: Path, need_bytes: int, settings: Dict[str, Any]) -> Dict[str, Any]:
    """`edgekit-agent gc`: optionally store new limits, then collect; says whether ``need_bytes`` fit."""
    spool = Spool(root).ensure()
    config = None
    if settings:
        try:
            config = save_config(spool, dict(read_json(spool.root / STORE_CONFIG) or {}, **settings))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return collect(spool, config, need_bytes)


def install_service(root: str, output: Optional[str], system: bool, user: Optional[str]) -> str:
    agent = shutil.which("edgekit-agent") or os.path.join(os.path.dirname(sys.executable), "edgekit-agent")
    text = unit_text(os.path.abspath(agent), str(Path(root).expanduser().resolve()),
                     user or os.environ.get("USER"), system)
    if output:
        Path(output).expanduser().write_text(text)
    return text


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgekit-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="edgekit-agent " + __version__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="run the agent: take published jobs one at a time")
    run.add_argument("--root", default=DEFAULT_ROOT)
    run.add_argument("--poll", type=float, default=0.2, help="seconds between looks at the queue")
    run.add_argument("--once", action="store_true", help="exit when the queue is empty")
    info = sub.add_parser("status", help="print the agent's state, backends and device as JSON")
    info.add_argument("--root", default=DEFAULT_ROOT)
    blob = sub.add_parser("commit-blob", help="move an uploaded blobs/<sha>.<writer>.part into the store if its "
                                              "hash matches")
    blob.add_argument("--root", default=DEFAULT_ROOT)
    blob.add_argument("--writer", default="", help="the uploader's part name (blobs/<sha>.<writer>.part)")
    blob.add_argument("sha256")
    collect_cmd = sub.add_parser("gc", help="remove blobs, engines and jobs nothing needs (LRU) beyond the store "
                                            "limit and free-space floor; print what is left as JSON")
    collect_cmd.add_argument("--root", default=DEFAULT_ROOT)
    collect_cmd.add_argument("--need", type=int, default=0, help="bytes about to be uploaded: make room for them")
    collect_cmd.add_argument("--store-limit-mb", type=float, help="keep the store under this (saved in config.json)")
    collect_cmd.add_argument("--min-free-mb", type=float, help="keep this much disk free (saved in config.json)")
    collect_cmd.add_argument("--keep-jobs", type=int, help="always keep the last N jobs (saved in config.json)")
    unit = sub.add_parser("install-service", help="write the systemd unit that starts the agent at boot")
    unit.add_argument("--root", default=DEFAULT_ROOT)
    unit.add_argument("--output", help="where to write the unit (default: print it)")
    unit.add_argument("--system", action="store_true", help="a system unit (runs as --user) instead of a user unit")
    unit.add_argument("--user", help="the unprivileged user a system unit runs as")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "serve":
            return serve(Path(args.root).expanduser(), args.poll, args.once)
        if args.command == "status":
            print(json.dumps(status(Path(args.root).expanduser()), indent=2, sort_keys=True))
            return 0
        if args.command == "commit-blob":
            problem = commit_upload(Path(args.root).expanduser(), args.sha256, args.writer)
            if problem:
                log("error: {}".format(problem))
            return 1 if problem else 0
        if args.command == "gc":
            settings = {k: v for k, v in (("store_limit_mb", args.store_limit_mb), ("min_free_mb", args.min_free_mb),
                                          ("keep_jobs", args.keep_jobs)) if v is not None}
            print(json.dumps(gc(Path(args.root).expanduser(), args.need, settings), indent=2, sort_keys=True))
            return 0
        if args.command == "install-service":
            text = install_service(args.root, args.output, args.system, args.user)
            if not args.output:
                sys.stdout.write(text)
            return 0
    except ConfigError as exc:
        log("error: {}".format(exc))
        return CONFIG_ERROR_EXIT
    except OSError as exc:
        log("error: {}".format(device_error(exc, "running `{}`".format(args.command))))
        return 1
    except KeyboardInterrupt:
        return 130
    parse_args(["--help"])
    return CONFIG_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
