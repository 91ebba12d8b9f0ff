"""``edgekit-agent``: the device daemon and its small admin commands.

argparse rather than typer: the device side must run with nothing but numpy (and the runtimes) installed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from .backends import describe_all
from .cpu import describe_cpu
from .cuda import cuda_bindings
from .errors import ConfigError
from .jobs import JobRunner, cleanup_builds
from .service import CONFIG_ERROR_EXIT, unit_text
from .spool import LOCK, Spool, read_json, write_json_atomic
from .telemetry import describe_host

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
        self.handle = open(str(self.path), "a+")
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
    write_json_atomic(spool.root / STATUS_FILE, {"pid": os.getpid(), "version": __version__, "started": time.time(),
                                                 "root": str(spool.root)})
    cleanup_builds(spool)
    runner = JobRunner(spool, log)
    log("serving {} (version {}, pid {})".format(spool.root, __version__, os.getpid()))
    for job in spool.unfinished():
        runner.run(job)
    while True:
        jobs = spool.queued()
        for job in jobs:
            if not take(spool, job):
                continue
            runner.run(job)
        if once and not jobs:
            return 0
        if not jobs:
            time.sleep(poll)


def take(spool: Spool, job: str) -> bool:
    """Claim a queued job; a job id that already ran is dropped (never crash the loop over one entry)."""
    if (spool.jobs / job).exists():
        log("error: job id {} was published again; the duplicate is dropped".format(job))
        shutil.rmtree(str(spool.queue / job), ignore_errors=True)
        return False
    try:
        spool.claim(job)
    except OSError as exc:
        log("error: cannot claim job {}: {}".format(job, exc))
        return False
    spool.set_state(job, "claimed")
    return True


def status(root: Path) -> Dict[str, Any]:
    spool = Spool(root)
    info = read_json(spool.root / STATUS_FILE) or {}
    usage = shutil.disk_usage(str(spool.root)) if spool.root.exists() else None
    models = {}
    if spool.models.is_dir():
        models = {p.name: spool.current(p.name) for p in sorted(spool.models.iterdir())}
    return {
        "version": __version__, "root": str(spool.root), "running": agent_running(spool.root),
        "pid": info.get("pid"), "queued": spool.queued() if spool.queue.is_dir() else [],
        "unfinished": spool.unfinished() if spool.jobs.is_dir() else [], "models": models,
        "free_disk_bytes": usage.free if usage else None, "backends": describe_all(), "device": describe_host(),
        "cuda": cuda_bindings(),
        "cpu": describe_cpu(),
    }


def commit_blob(root: Path, sha: str) -> int:
    """The upload's last step, run on the device: the hash is checked where the bytes landed."""
    spool = Spool(root)
    part = spool.blobs / "{}.part".format(sha)
    if not part.is_file():
        log("error: no upload {} to commit".format(part))
        return 1
    try:
        spool.commit_blob(sha, part)
    except ValueError as exc:
        log("error: {}".format(exc))
        return 1
    return 0


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
    blob = sub.add_parser("commit-blob", help="move an uploaded blobs/<sha>.part into the store if its hash matches")
    blob.add_argument("--root", default=DEFAULT_ROOT)
    blob.add_argument("sha256")
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
            return commit_blob(Path(args.root).expanduser(), args.sha256)
        if args.command == "install-service":
            text = install_service(args.root, args.output, args.system, args.user)
            if not args.output:
                sys.stdout.write(text)
            return 0
    except ConfigError as exc:
        log("error: {}".format(exc))
        return CONFIG_ERROR_EXIT
    except KeyboardInterrupt:
        return 130
    parse_args(["--help"])
    return CONFIG_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
