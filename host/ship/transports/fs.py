"""The small file-system interface the spool client speaks, and its implementation on this machine.

The spool protocol (``client.py``) is written once against ``SpoolFS``; a transport only says how to
stat, list, read, write, rename and remove paths under the agent root, and how to run the agent's two
device-side steps (hash-check an upload into the store; garbage-collect to make room). ``LocalFS`` does
that with ``os`` and the agent's admin interface; ``SFTPFS`` (``sftp.py``) with SFTP and ``edgekit-agent``
over SSH. Paths are relative to the agent root, '/'-separated.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

BytesProgress = Callable[[int], None]
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Entry:
    size: int
    mtime: float
    is_dir: bool


class SpoolFS:
    """What the spool client needs from a device. Missing paths are ``None``/``[]``, never an exception."""

    label = "device"

    def stat(self, path: str) -> Optional[Entry]:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def read(self, path: str, offset: int = 0) -> Optional[bytes]:
        raise NotImplementedError

    def write(self, path: str, data: bytes, append: bool = False) -> None:
        raise NotImplementedError

    def send(self, path: str, source: Path, offset: int, progress: BytesProgress) -> None:
        """Copy ``source`` from ``offset`` to ``path`` (appending; a new file when ``offset`` is 0)."""
        raise NotImplementedError

    def mkdir(self, path: str) -> None:
        """Create a folder (and its parents); an existing one is fine."""
        raise NotImplementedError

    def rename(self, source: str, target: str) -> None:
        """Atomic rename (POSIX semantics)."""
        raise NotImplementedError

    def remove(self, path: str) -> None:
        """Remove a file or a folder tree; a missing one is fine."""
        raise NotImplementedError

    def chmod(self, path: str, mode: int) -> None:
        raise NotImplementedError

    # -- the agent's device-side steps ---------------------------------------------------------
    def commit(self, shas: list[str], writer: str) -> Optional[str]:
        """Hash-check each ``blobs/<sha>.<writer>.part`` on the device and move it into the store, all in one call
        (one round trip per push, not per blob); the first error (``<sha>: <reason>``) or None."""
        raise NotImplementedError

    def collect(self, need_bytes: int, settings: dict[str, Any]) -> dict[str, Any]:
        """Run the agent's garbage collection (storing ``settings`` first); its JSON answer."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class LocalFS(SpoolFS):
    """An agent root on this machine (the ``local`` device)."""

    label = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        return self.root / path

    def stat(self, path: str) -> Optional[Entry]:
        try:
            info = os.stat(self._path(path))
        except FileNotFoundError:
            return None
        return Entry(info.st_size, info.st_mtime, os.path.isdir(self._path(path)))

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(self._path(path))
        except FileNotFoundError:
            return []

    def read(self, path: str, offset: int = 0) -> Optional[bytes]:
        try:
            with open(self._path(path), "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes, append: bool = False) -> None:
        with open(self._path(path), "ab" if append else "wb") as handle:
            handle.write(data)

    def send(self, path: str, source: Path, offset: int, progress: BytesProgress) -> None:
        with open(source, "rb") as reader, open(self._path(path), "ab" if offset else "wb") as target:
            reader.seek(offset)
            for block in iter(lambda: reader.read(CHUNK), b""):
                target.write(block)
                progress(len(block))

    def mkdir(self, path: str) -> None:
        self._path(path).mkdir(parents=True, exist_ok=True, mode=0o700)

    def rename(self, source: str, target: str) -> None:
        os.rename(self._path(source), self._path(target))

    def remove(self, path: str) -> None:
        target = self._path(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        elif target.is_symlink() or target.exists():
            target.unlink()

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._path(path), mode)

    def commit(self, shas: list[str], writer: str) -> Optional[str]:
        from ....device.agent.admin import commit_uploads

        problems = commit_uploads(self.root, shas, writer)
        return next((f"{sha}: {problem}" for sha, problem in problems.items()), None)

    def collect(self, need_bytes: int, settings: dict[str, Any]) -> dict[str, Any]:
        from ....device.agent.admin import gc

        return gc(self.root, need_bytes, settings)
