"""The agent root on disk (the agent's side of the spool protocol), and the atomic writes everything here uses.

The layout and the names host and agent share are the contract's (``..contract.protocol``); this module
adds what only the agent does with them: claiming, state, events, reports, switching ``current``, and
the lock and status file that say an agent serves the root.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..contract.manifest import MANIFEST, SIGNATURE, is_safe_name, sha256_file
from ..contract.protocol import (
    BLOBS,
    ENGINES,
    EVENTS,
    HEARTBEAT,
    INCOMING,
    JOBS,
    LAYOUT,
    MODELS,
    QUEUE,
    REPORT,
    STALE_INCOMING_S,
    STATE,
    TERMINAL_STATES,
    TRUSTED_KEYS,
    part_name,
    staging_name,
)

LOCK = "agent.lock"  # flock-ed by the serving agent for its whole life
STATUS_FILE = "agent.json"  # written by the serving agent at start: its pid, version, start time


def log(message: str) -> None:
    """The agent's log is its stderr: journald under systemd, ``agent.log`` for the local device. A log on a
    full or failing disk loses the line, never the agent (an exception here would stop it)."""
    try:
        sys.stderr.write("edgekit-agent: {}\n".format(message))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def write_atomic(path: Path, data: bytes) -> None:
    """Write next to the target and rename, so readers see the old or the new file, never half."""
    tmp = path.with_name(".{}.{}.tmp".format(path.name, os.getpid()))
    try:
        with open(str(tmp), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(str(tmp), str(path))
    except BaseException:
        try:  # a full disk must not also keep the half-written temporary
            os.unlink(str(tmp))
        except OSError:
            pass
        raise


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(str(path), "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return None


class Spool:
    """One agent root. Used by the agent, and by the host's local transport through ``admin.open_root``."""

    def __init__(self, root: Any) -> None:
        self.root = Path(root).expanduser()

    # -- layout -----------------------------------------------------------------------------
    @property
    def blobs(self) -> Path:
        return self.root / BLOBS

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING

    @property
    def queue(self) -> Path:
        return self.root / QUEUE

    @property
    def jobs(self) -> Path:
        return self.root / JOBS

    @property
    def engines(self) -> Path:
        return self.root / ENGINES

    @property
    def models(self) -> Path:
        return self.root / MODELS

    @property
    def trusted_keys(self) -> Path:
        return self.root / TRUSTED_KEYS

    def ensure(self) -> Spool:
        for name in LAYOUT:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o777 != 0o700:
            os.chmod(str(self.root), 0o700)
        return self

    # -- content store ----------------------------------------------------------------------
    def blob(self, sha: str) -> Path:
        if not is_safe_name(sha):
            raise ValueError("not a blob name: {!r}".format(sha))
        return self.blobs / sha

    def has_blob(self, sha: str) -> bool:
        path = self.blob(sha)
        return path.is_file() and not path.is_symlink()

    def part(self, sha: str, writer: str = "") -> Path:
        name = part_name(sha, writer)
        if not is_safe_name(name):
            raise ValueError("not an upload name: {!r}".format(name))
        return self.blobs / name

    def commit_blob(self, sha: str, part: Path) -> None:
        """Move an uploaded ``.part`` into the store only if its content hashes to its name.

        Two writers may commit the same blob: the content is the same, so whichever rename lands last wins.
        """
        if part.is_symlink() or not part.is_file():
            raise ValueError("no upload {} to commit; push again".format(part.name))
        actual = sha256_file(part)
        if actual != sha:
            part.unlink()
            raise ValueError("upload of {} arrived corrupted (sha256 {}); push again".format(sha[:12], actual[:12]))
        os.replace(str(part), str(self.blob(sha)))

    def sweep_parts(self, older_than: float, now: Optional[float] = None) -> List[str]:
        """Remove uploads and publishes abandoned longer than ``older_than`` seconds (at start, and by gc)."""
        now = time.time() if now is None else now
        removed = []
        candidates = [p for p in self.blobs.glob("*.part")] if self.blobs.is_dir() else []
        candidates += [p for p in self.incoming.glob("*.part")] if self.incoming.is_dir() else []
        for path in candidates:
            try:
                age = now - path.lstat().st_mtime
                if path.parent == self.incoming and age < STALE_INCOMING_S:
                    continue
                if path.parent == self.blobs and age < older_than:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(str(path))
                else:
                    path.unlink()
                removed.append(path.name)
            except OSError:
                continue
        return removed

    def beat(self) -> None:
        """Touch the heartbeat (metadata only: works on a full disk, costs nothing during a benchmark)."""
        path = self.root / HEARTBEAT
        try:
            os.utime(str(path))
        except FileNotFoundError:
            path.touch()

    # -- jobs -------------------------------------------------------------------------------
    def publish(self, job: str, manifest: bytes, signature: bytes) -> None:
        """Make a job visible to the agent in one rename."""
        staging = self.incoming / staging_name(job)
        staging.mkdir(parents=True)
        try:
            write_atomic(staging / MANIFEST, manifest)
            write_atomic(staging / SIGNATURE, signature)
            os.rename(str(staging), str(self.queue / job))
        except OSError:
            shutil.rmtree(str(staging), ignore_errors=True)
            raise

    def queued(self) -> List[str]:
        """Published jobs, oldest first; only real directories (a symlink could lead outside the spool)."""
        return sorted(p.name for p in self.queue.iterdir() if _real_dir(p) and is_safe_name(p.name))

    def foreign_entries(self) -> List[Path]:
        """Queue entries that are not plain job directories (symlinks, files, odd names): refused."""
        return [p for p in self.queue.iterdir() if not (_real_dir(p) and is_safe_name(p.name))]

    def claim(self, job: str) -> Path:
        """Move a queued job into jobs/; after this the agent owns it until it is terminal."""
        target = self.jobs / job
        os.rename(str(self.queue / job), str(target))
        return target

    def job_dir(self, job: str) -> Path:
        if not is_safe_name(job):
            raise ValueError("not a job id: {!r}".format(job))
        return self.jobs / job

    def state(self, job: str) -> Optional[Dict[str, Any]]:
        return read_json(self.job_dir(job) / STATE)

    def set_state(self, job: str, status: str, **extra: Any) -> None:
        data = {"job": job, "status": status, "updated": time.time()}
        data.update(extra)
        write_json_atomic(self.job_dir(job) / STATE, data)

    def unfinished(self) -> List[str]:
        """Claimed jobs that are not terminal: what a restarted agent must finish first.

        A job with a report is terminal whatever its state file says (``is_terminal``): the agent only
        completes its state from the report, never runs it again.
        """
        result = []
        for path in sorted(self.jobs.iterdir()):
            if not _real_dir(path) or not is_safe_name(path.name):
                continue
            state = _read_json_quiet(path / STATE)
            if state.get("status") not in TERMINAL_STATES:  # with a report: only its state is left to write
                result.append(path.name)
        return result

    def is_terminal(self, job: str) -> bool:
        state = _read_json_quiet(self.job_dir(job) / STATE)
        return state.get("status") in TERMINAL_STATES or (self.job_dir(job) / REPORT).exists()

    def append_event(self, job: str, kind: str, message: str, **data: Any) -> None:
        """One JSON line per event; appends of a single write are atomic for readers of whole lines."""
        event = {"t": round(time.time(), 3), "kind": kind, "message": message}
        event.update(data)
        line = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(str(self.job_dir(job) / EVENTS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def write_report(self, job: str, report: Dict[str, Any]) -> None:
        write_json_atomic(self.job_dir(job) / REPORT, report)

    def report(self, job: str) -> Optional[Dict[str, Any]]:
        return read_json(self.job_dir(job) / REPORT)

    # -- active models ----------------------------------------------------------------------
    def current(self, model: str) -> Optional[str]:
        link = self.models / model / "current"
        return os.readlink(str(link)) if link.is_symlink() else None

    def switch(self, model: str, engine_dir: Path) -> Optional[str]:
        """Point ``current`` at a new engine atomically; keep the old target as ``previous``."""
        folder = self.models / model
        folder.mkdir(parents=True, exist_ok=True)
        old = self.current(model)
        target = os.path.relpath(str(engine_dir), str(folder))
        if old is not None and old != target:
            _symlink_atomic(folder / "previous", old)
        _symlink_atomic(folder / "current", target)
        return old


class AgentLock:
    """An flock on the root: one agent per root, and a held lock is how others see an agent is alive."""

    def __init__(self, spool: Spool) -> None:
        self.path = spool.root / LOCK
        self.handle = None  # type: Any

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, retrying for ``wait`` seconds: a killed agent's last worker may still be dying."""
        deadline = time.monotonic() + wait
        while not self._try():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _try(self) -> bool:
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

    def forget(self) -> None:
        """In a forked worker: drop the inherited descriptor, so the lock dies with the agent, not its worker.

        An flock belongs to the open file, which fork shares; a worker holding it would keep a restarted
        agent out (and, exiting 0 as "already served", out for good under systemd's Restart=on-failure).
        """
        if self.handle is not None:
            os.close(self.handle.fileno())


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _read_json_quiet(path: Path) -> Dict[str, Any]:
    """A state file that cannot be read counts as empty (a half-dead disk must not stop the agent)."""
    try:
        return read_json(path) or {}
    except (OSError, ValueError):
        return {}


def _symlink_atomic(link: Path, target: str) -> None:
    tmp = link.with_name(".{}.{}.tmp".format(link.name, os.getpid()))
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, str(tmp))
    os.replace(str(tmp), str(link))
