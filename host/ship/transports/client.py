"""The spool protocol, host side, written once for every transport (see DESIGN.md §4).

Blobs are uploaded to ``blobs/<sha>.<writer>.part``; the published job names its writer, and the agent
moves each part into the store when it takes the job, once its hash matches the signed manifest (spool
version 2; an older agent is asked to commit them with ``edgekit-agent commit-blob``), so concurrent pushes
never write the same file and no remote command runs on a push's path. A gc runs on the device before each
job; the host asks for one itself only when the agent's ``store.json`` says the upload might not fit, or
deploy.toml's disk settings differ from the device's. A writer name is this host's id plus a
slot held with a host-side lock for the life of the push: the next push from this host takes the same
slot and resumes an upload a dropped connection cut off. Jobs are published with one rename.
Liveness is the agent's heartbeat file, whose mtime it touches every second: cheap to read over SFTP
and harmless to a benchmark running on the device.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Optional

from ....device.contract.manifest import MANIFEST, SIGNATURE
from ....device.contract.protocol import (
    BLOBS,
    DEVICE_INFO,
    EVENTS,
    HEARTBEAT,
    HEARTBEAT_S,
    INCOMING,
    JOBS,
    LAYOUT,
    QUEUE,
    REPORT,
    SPOOL_VERSION,
    STATE,
    STORE_STATE,
    TRUSTED_KEYS,
    WRITER,
    parse_event_chunk,
    part_name,
    staging_name,
)
from ...config import host_home
from ...errors import CheckFailed
from .fs import BytesProgress, SpoolFS

WRITER_SLOTS = 64
ROOM_MARGIN = 64 * 1024 * 1024  # free space beyond twice the upload (for its engine) that spares a remote gc


def host_id() -> str:
    """A short random id for this host (created once): other hosts' uploads never share a part name with ours."""
    path = host_home() / "host_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_hex(4)
        tmp = path.with_name(f".host_id.{os.getpid()}")
        tmp.write_text(value + "\n")
        try:
            os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's id
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text().strip()


class WriterSlot:
    """The lowest free slot on this host, held with flock until released (or the process ends)."""

    def __init__(self) -> None:
        folder = host_home() / "writers"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for slot in range(WRITER_SLOTS):
            handle = open(folder / f"{slot}.lock", "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.handle, self.name = handle, f"{host_id()}s{slot}"
            return
        raise CheckFailed(f"more than {WRITER_SLOTS} pushes at once from this host; wait for some to finish")

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class SpoolClient:
    """One agent root seen through a ``SpoolFS``; the transports add only how to reach and start the agent."""

    name = "spool"

    def __init__(self, device_name: str, fs: SpoolFS) -> None:
        self.device_name, self.fs = device_name, fs
        self._writer: Optional[WriterSlot] = None
        self._beat: Optional[float] = None
        self.info: dict[str, Any] = {}  # device_info's answer: its spool version says who commits uploads

    @property
    def writer(self) -> str:
        if self._writer is None:
            self._writer = WriterSlot()
        return self._writer.name

    def ensure_agent(self) -> None:
        """Make sure an agent serves the root (the local device starts one; SSH devices run it at boot)."""

    def revive_agent(self) -> bool:
        """Start a dead agent again where the host may (local); on real devices systemd does it."""
        return False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self.fs.close()

    # -- set-up ------------------------------------------------------------------------------------
    def ensure_layout(self) -> None:
        present = set(self.fs.listdir(""))  # one round trip when the layout is there (every push after the first)
        for folder in LAYOUT:
            if folder not in present:
                self.fs.mkdir(folder)

    def device_info(self) -> dict[str, Any]:
        """What the device is and can run (runtimes, CPU: what the files are chosen by), as the agent wrote it at
        its start: one file read, where running `edgekit-agent status` on the device costs a Python start and
        the runtimes' imports per push. The full status when the file is missing (an agent that never started,
        or one older than this host)."""
        raw = self.fs.read(DEVICE_INFO)
        try:
            info = json.loads(raw) if raw else None
        except ValueError:  # never half-written (replaced atomically); a damaged one is ignored
            info = None
        if not (isinstance(info, dict) and isinstance(info.get("backends"), dict)):
            info = self.status()
        self.info = info
        return info

    @property
    def agent_takes_uploads(self) -> bool:
        """Whether the agent commits a job's uploads when it takes the job (spool version 2)."""
        version = self.info.get("spool", 1)
        return isinstance(version, int) and version >= SPOOL_VERSION

    def status(self, load_engines: bool = False) -> dict[str, Any]:
        """The agent's full status, computed on the device (each transport says how)."""
        raise NotImplementedError

    def trust(self, public_line: str) -> None:
        """Add the host's signing key to the agent's trusted keys unless it is there."""
        current = (self.fs.read(TRUSTED_KEYS) or b"").decode()
        key = public_line.split()[1]
        if key not in {line.split()[1] for line in current.splitlines() if len(line.split()) > 1}:
            self.fs.write(TRUSTED_KEYS, (public_line + "\n").encode(), append=True)
            self.fs.chmod(TRUSTED_KEYS, 0o600)

    # -- blobs -------------------------------------------------------------------------------------
    def missing(self, hashes: list[str]) -> list[str]:
        present = set(self.fs.listdir(BLOBS))
        return [sha for sha in hashes if sha not in present]

    def room_known(self, need_bytes: int, settings: dict[str, Any]) -> bool:
        """True when the agent's last gc (``store.json``) shows ``need_bytes`` fit with room to spare and the device
        keeps the disk settings deploy.toml gives: then ``make_room`` has nothing to do (the agent collects before
        each job anyway), and the push saves a remote process. A full disk met anyway fails the upload with a
        clear line, the active model in place."""
        raw = self.fs.read(STORE_STATE)
        try:
            state = json.loads(raw) if raw else None
        except ValueError:
            return False
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            return False
        if any(state["config"].get(key) != value for key, value in settings.items()):
            return False
        free, floor = state.get("free_bytes"), state.get("min_free_bytes")
        return isinstance(free, int) and isinstance(floor, int) and free - 2 * need_bytes - ROOM_MARGIN >= floor

    def make_room(self, need_bytes: int, settings: dict[str, Any]) -> dict[str, Any]:
        """Garbage-collect on the device for ``need_bytes``; refuse before uploading when they cannot fit."""
        if self.agent_takes_uploads and self.room_known(need_bytes, settings):
            return {"fits": True}
        answer = self.fs.collect(need_bytes, settings)
        if need_bytes and not answer.get("fits", True):
            free, floor = answer.get("free_bytes", 0), answer.get("min_free_bytes", 0)
            raise CheckFailed(f"{self.device_name}: the upload needs {need_bytes / 1e6:.1f} MB but the device has "
                              f"{free / 1e6:.1f} MB free and keeps {floor / 1e6:.1f} MB free (min_free_mb), even "
                              "after removing old engines and blobs; free space on the device or lower "
                              "min_free_mb, then push again")
        return answer

    def upload(self, sha: str, path: Path, progress: BytesProgress) -> None:
        """One blob: sent, then committed."""
        self.upload_all({sha: path}, progress)

    def upload_all(self, blobs: dict[str, Path], progress: BytesProgress) -> None:
        """Send every blob into this writer's parts; the agent commits them when it takes the job that names this
        writer (an older agent in one call here; either checks each hash where the bytes landed)."""
        for sha, path in blobs.items():
            self.send_part(sha, path, progress)
        if self.agent_takes_uploads:
            return
        problem = self.fs.commit(list(blobs), self.writer) if blobs else None
        if problem:
            sha, _, reason = problem.partition(": ")
            name = blobs[sha].name if sha in blobs else "a file"
            raise CheckFailed(f"upload of {name} to {self.device_name} failed: {reason or problem}")

    def send_part(self, sha: str, path: Path, progress: BytesProgress) -> None:
        """The blob into this writer's part, from where an earlier cut-off upload stopped."""
        part = f"{BLOBS}/{part_name(sha, self.writer)}"
        size = path.stat().st_size
        entry = self.fs.stat(part)
        offset = entry.size if entry is not None and not entry.is_dir else 0
        if offset > size:
            self.fs.remove(part)
            offset = 0
        if offset < size or entry is None:
            self.fs.send(part, path, offset, progress)

    # -- jobs --------------------------------------------------------------------------------------
    def publish(self, job: str, manifest: bytes, signature: bytes) -> None:
        """Write the job under incoming/ and rename it into queue/ in one step; nothing is left on failure."""
        staging = f"{INCOMING}/{staging_name(job)}"
        self.fs.mkdir(staging)
        try:
            if self._writer is not None and self.agent_takes_uploads:  # this push sent parts: the agent takes them
                self.fs.write(f"{staging}/{WRITER}", self._writer.name.encode())
            self.fs.write(f"{staging}/{MANIFEST}", manifest)
            self.fs.write(f"{staging}/{SIGNATURE}", signature)
            self.fs.rename(staging, f"{QUEUE}/{job}")
        except CheckFailed:
            raise
        except OSError:
            try:
                self.fs.remove(staging)
            except (OSError, CheckFailed):
                pass
            raise

    def events(self, job: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        chunk = self.fs.read(f"{JOBS}/{job}/{EVENTS}", offset)
        return parse_event_chunk(chunk, offset) if chunk else ([], offset)

    def state(self, job: str) -> Optional[dict[str, Any]]:
        raw = self.fs.read(f"{JOBS}/{job}/{STATE}")
        if raw:
            try:
                return json.loads(raw)
            except ValueError:
                pass  # being replaced right now (never half-written, but be safe): read again next time
        if self.fs.stat(f"{JOBS}/{job}") is not None:
            return {"status": "claimed"}
        return {"status": "queued" if self.fs.stat(f"{QUEUE}/{job}") is not None else "unknown"}

    def report(self, job: str) -> Optional[dict[str, Any]]:
        raw = self.fs.read(f"{JOBS}/{job}/{REPORT}")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    # -- liveness ----------------------------------------------------------------------------------
    def agent_alive(self, patience: float = 3 * HEARTBEAT_S) -> bool:
        """True when the heartbeat's mtime moves (compared with itself: the device's clock may differ)."""
        entry = self.fs.stat(HEARTBEAT)
        if entry is None:
            return False
        if self._beat is not None and entry.mtime != self._beat:
            self._beat = entry.mtime
            return True
        first, deadline = entry.mtime, time.monotonic() + patience
        while time.monotonic() < deadline:
            time.sleep(0.25)
            entry = self.fs.stat(HEARTBEAT)
            if entry is not None and entry.mtime != first:
                self._beat = entry.mtime
                return True
        self._beat = first
        return False
