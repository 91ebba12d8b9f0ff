"""``SpoolFS`` over SSH: SFTP for files, ``edgekit-agent`` on the device for the two device-side steps.

Every failure of the connection itself (a dropped link, a reset, a closed socket, a timeout) becomes
``ConnectionLost`` with a one-line reason; the spool client turns it into what the user should do.
"""

from __future__ import annotations

import functools
import json
import posixpath
import shlex
import socket
import stat as stat_mode
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import paramiko

from ...errors import CheckFailed
from .connect import run
from .fs import CHUNK, BytesProgress, Entry, SpoolFS

T = TypeVar("T")
_DROPPED = (EOFError, ConnectionError, socket.error, socket.timeout, paramiko.SSHException)


class ConnectionLost(CheckFailed):
    """The SSH connection broke; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, socket.timeout):
        return "the connection timed out"
    if isinstance(exc, EOFError) or "closed" in text.lower() or "dropped" in text.lower():
        return "the connection was closed"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    return text.splitlines()[0][:200]


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Translate a broken connection into ConnectionLost; file errors (missing, refused) pass through."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except ConnectionLost:
            raise
        except (FileNotFoundError, PermissionError):
            raise
        except _DROPPED as exc:
            raise ConnectionLost(reason_of(exc)) from None
        except OSError as exc:
            if exc.errno is None and isinstance(exc.args[0] if exc.args else None, str) and \
                    "socket" in exc.args[0].lower():
                raise ConnectionLost(reason_of(exc)) from None
            raise

    return wrapper


class SFTPFS(SpoolFS):
    def __init__(self, label: str, client: paramiko.SSHClient, sftp: paramiko.SFTPClient, root: str,
                 agent: str) -> None:
        self.label, self.client, self.sftp, self.root, self.agent = label, client, sftp, root, agent

    def _path(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    @guarded
    def stat(self, path: str) -> Optional[Entry]:
        try:
            info = self.sftp.stat(self._path(path))
        except FileNotFoundError:
            return None
        return Entry(info.st_size or 0, float(info.st_mtime or 0), stat_mode.S_ISDIR(info.st_mode or 0))

    @guarded
    def listdir(self, path: str) -> list[str]:
        try:
            return self.sftp.listdir(self._path(path))
        except FileNotFoundError:
            return []

    @guarded
    def read(self, path: str, offset: int = 0) -> Optional[bytes]:
        try:
            with self.sftp.open(self._path(path), "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return None

    @guarded
    def write(self, path: str, data: bytes, append: bool = False) -> None:
        with self.sftp.open(self._path(path), "ab" if append else "wb") as handle:
            handle.write(data)

    @guarded
    def send(self, path: str, source: Path, offset: int, progress: BytesProgress) -> None:
        with open(source, "rb") as reader, self.sftp.open(self._path(path), "ab" if offset else "wb") as target:
            target.set_pipelined(True)
            reader.seek(offset)
            for block in iter(lambda: reader.read(CHUNK), b""):
                target.write(block)
                progress(len(block))

    @guarded
    def mkdir(self, path: str) -> None:
        try:
            self.sftp.mkdir(self._path(path), 0o700)  # one round trip when the parent is there (the usual case)
            return
        except OSError:
            pass  # the parent is missing, or the folder exists: walk down from the top
        current = ""
        for part in self._path(path).strip("/").split("/"):
            current += "/" + part
            try:
                self.sftp.stat(current)
            except FileNotFoundError:
                self.sftp.mkdir(current, 0o700)

    @guarded
    def rename(self, source: str, target: str) -> None:
        self.sftp.posix_rename(self._path(source), self._path(target))

    @guarded
    def remove(self, path: str) -> None:
        full = self._path(path)
        try:
            info = self.sftp.lstat(full)
        except FileNotFoundError:
            return
        if stat_mode.S_ISDIR(info.st_mode or 0):
            for name in self.sftp.listdir(full):
                self.remove(posixpath.join(path, name))
            self.sftp.rmdir(full)
        else:
            self.sftp.remove(full)

    @guarded
    def chmod(self, path: str, mode: int) -> None:
        self.sftp.chmod(self._path(path), mode)

    @guarded
    def run(self, command: str, timeout: float = 600.0) -> tuple[int, str, str]:
        return run(self.client, command, timeout)

    def agent_command(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (self.agent, *args, "--root", self.root))

    def commit(self, shas: list[str], writer: str) -> Optional[str]:
        code, _, err = self.run(self.agent_command("commit-blob", "--writer", writer, *shas))
        if code == 0:
            return None
        if len(shas) > 1 and "unrecognized arguments" in err:  # an agent older than batched commits: one at a time
            for sha in shas:
                problem = self.commit([sha], writer)
                if problem:
                    return f"{sha}: {problem}"
            return None
        lines = [line for line in err.strip().splitlines() if line.strip()]
        return lines[-1].removeprefix("edgekit-agent: error: ") if lines else f"edgekit-agent exited with {code}"

    def collect(self, need_bytes: int, settings: dict[str, Any]) -> dict[str, Any]:
        args = ["gc", "--need", str(need_bytes)]
        for key, value in settings.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        code, out, err = self.run(self.agent_command(*args), timeout=300)
        if code != 0:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            raise CheckFailed(f"{self.label}: `edgekit-agent gc` failed: {lines[-1] if lines else code}")
        return json.loads(out)

    def close(self) -> None:
        try:
            self.sftp.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not raise
            pass
        self.client.close()
