"""A device reached over SSH: SFTP into the agent's spool, the agent's own commands for the rest.

Uploads go to ``blobs/<sha>.part`` and resume from its size after a dropped connection; the device
checks the hash and renames (``edgekit-agent commit-blob``), so a blob is never used half-written or
corrupted. A job is published with one atomic rename (OpenSSH's posix-rename extension).
"""

from __future__ import annotations

import json
import posixpath
import shlex
from pathlib import Path
from typing import Any, Optional

from edgekit.device.manifest import MANIFEST, SIGNATURE
from edgekit.device.spool import TRUSTED_KEYS, parse_event_chunk

from ..config import DeviceSection
from ..errors import CheckFailed
from ..ssh import Destination, connect, destination_for, run
from .base import BytesProgress, Transport

CHUNK = 256 * 1024


def remote_paths(home: str, root: str, venv: str) -> tuple[str, str]:
    """Absolute agent root and venv on the device (SFTP does not expand ``~``)."""
    def absolute(path: str) -> str:
        if path == "~" or path.startswith("~/"):
            return posixpath.join(home, path[2:]) if len(path) > 1 else home
        return path if path.startswith("/") else posixpath.join(home, path)

    root_abs = absolute(root)
    return root_abs, absolute(venv) if venv else posixpath.join(root_abs, "venv")


class SSHTransport(Transport):
    name = "ssh"

    def __init__(self, device_name: str, device: DeviceSection,
                 destination: Optional[Destination] = None) -> None:
        self.device_name = device_name
        self.destination = destination or destination_for(device)
        self.client = connect(self.destination)
        self.sftp = self.client.open_sftp()
        self.root, self.venv = remote_paths(self.sftp.normalize("."), device.root, device.venv)
        self.agent = posixpath.join(self.venv, "bin", "edgekit-agent")

    # -- helpers ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def run(self, command: str, timeout: float = 600.0) -> tuple[int, str, str]:
        return run(self.client, command, timeout)

    def agent_command(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (self.agent, *args, "--root", self.root))

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
            return True
        except FileNotFoundError:
            return False

    def read(self, path: str) -> Optional[bytes]:
        try:
            with self.sftp.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def makedirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        current = ""
        for part in parts:
            current += "/" + part
            if not self.exists(current):
                self.sftp.mkdir(current, 0o700)

    def require_agent(self) -> None:
        if not self.exists(self.agent):
            raise CheckFailed(f"edgekit is not installed on {self.device_name} ({self.agent} is missing); "
                              f"run `edgekit device setup {self.device_name}`")

    # -- Transport ----------------------------------------------------------------------------
    def ensure_agent(self) -> None:
        self.require_agent()
        for folder in ("blobs", "incoming", "queue", "jobs"):
            self.makedirs(self.path(folder))

    def trust(self, public_line: str) -> None:
        path = self.path(TRUSTED_KEYS)
        current = (self.read(path) or b"").decode()
        key = public_line.split()[1]
        if key not in {line.split()[1] for line in current.splitlines() if len(line.split()) > 1}:
            with self.sftp.open(path, "a") as handle:
                handle.write((public_line + "\n").encode())
            self.sftp.chmod(path, 0o600)

    def missing(self, hashes: list[str]) -> list[str]:
        present = set(self.sftp.listdir(self.path("blobs")))
        return [sha for sha in hashes if sha not in present]

    def upload(self, sha: str, path: Path, progress: BytesProgress) -> None:
        self.send_part(sha, path, progress)
        self.commit(sha, path.name)

    def send_part(self, sha: str, path: Path, progress: BytesProgress) -> str:
        """Append to ``blobs/<sha>.part`` from where an earlier, interrupted upload stopped."""
        part = self.path("blobs", f"{sha}.part")
        size = path.stat().st_size
        try:
            offset = self.sftp.stat(part).st_size
        except FileNotFoundError:
            offset = 0
        if offset > size:
            self.sftp.remove(part)
            offset = 0
        with open(path, "rb") as source, self.sftp.open(part, "ab" if offset else "wb") as target:
            target.set_pipelined(True)
            source.seek(offset)
            while True:
                block = source.read(CHUNK)
                if not block:
                    break
                target.write(block)
                progress(len(block))
        return part

    def commit(self, sha: str, label: str) -> None:
        """The device hashes the upload and moves it into the store, or deletes it."""
        code, _, err = self.run(self.agent_command("commit-blob", sha))
        if code != 0:
            raise CheckFailed(f"upload of {label} to {self.device_name} failed: {err.strip().splitlines()[-1]}")

    def publish(self, job: str, manifest: bytes, signature: bytes) -> None:
        staging = self.path("incoming", f"{job}.part")
        self.sftp.mkdir(staging, 0o700)
        for name, payload in ((MANIFEST, manifest), (SIGNATURE, signature)):
            with self.sftp.open(posixpath.join(staging, name), "wb") as handle:
                handle.write(payload)
        self.sftp.posix_rename(staging, self.path("queue", job))

    def events(self, job: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        try:
            with self.sftp.open(self.path("jobs", job, "events.jsonl"), "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return [], offset
        return parse_event_chunk(chunk, offset)

    def state(self, job: str) -> Optional[dict[str, Any]]:
        raw = self.read(self.path("jobs", job, "state.json"))
        if raw:
            return json.loads(raw)
        return {"status": "queued" if self.exists(self.path("queue", job)) else
                ("claimed" if self.exists(self.path("jobs", job)) else "unknown")}

    def report(self, job: str) -> Optional[dict[str, Any]]:
        raw = self.read(self.path("jobs", job, "report.json"))
        return json.loads(raw) if raw else None

    def status(self) -> dict[str, Any]:
        self.require_agent()
        code, out, err = self.run(self.agent_command("status"), timeout=120)
        if code != 0:
            raise CheckFailed(f"{self.device_name}: `edgekit-agent status` failed: {err.strip()[-300:]}")
        return json.loads(out)

    def agent_alive(self) -> bool:
        return bool(self.status().get("running"))

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()

