"""A device reached over SSH: the spool client over SFTP, plus what only SSH can do (run commands).

Uploads resume after a dropped connection (same writer slot, same part file); the device checks each
blob's hash before it enters the store; a job is published with one atomic rename (OpenSSH's
posix-rename extension).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Optional

from ...config import DeviceSection
from ...errors import CheckFailed
from .client import SpoolClient
from .connect import Destination, connect, destination_for
from .sftp import SFTPFS, guarded


def remote_paths(home: str, root: str, venv: str) -> tuple[str, str]:
    """Absolute agent root and venv on the device (SFTP does not expand ``~``)."""
    def absolute(path: str) -> str:
        if path == "~" or path.startswith("~/"):
            return posixpath.join(home, path[2:]) if len(path) > 1 else home
        return path if path.startswith("/") else posixpath.join(home, path)

    root_abs = absolute(root)
    return root_abs, absolute(venv) if venv else posixpath.join(root_abs, "venv")


class SSHTransport(SpoolClient):
    name = "ssh"

    def __init__(self, device_name: str, device: DeviceSection,
                 destination: Optional[Destination] = None) -> None:
        self.destination = destination or destination_for(device)
        self.client = connect(self.destination)
        self.sftp = guarded(self.client.open_sftp)()
        home = guarded(self.sftp.normalize)(".")
        self.root, self.venv = remote_paths(home, device.root, device.venv)
        self.agent = posixpath.join(self.venv, "bin", "edgekit-agent")
        super().__init__(device_name, SFTPFS(device_name, self.client, self.sftp, self.root, self.agent))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def run(self, command: str, timeout: float = 600.0) -> tuple[int, str, str]:
        return self.fs.run(command, timeout)

    def agent_command(self, *args: str) -> str:
        return self.fs.agent_command(*args)

    def makedirs(self, path: str) -> None:
        """An absolute folder on the device (the venv's and dist's live outside the root)."""
        self.fs.mkdir(path)  # posixpath.join(root, absolute) is the absolute path

    def require_agent(self) -> None:
        if self.fs.stat(self.agent) is None:
            raise CheckFailed(f"edgekit is not installed on {self.device_name} ({self.agent} is missing); "
                              f"run `edgekit device setup {self.device_name}`")

    def ensure_agent(self) -> None:
        self.require_agent()
        self.ensure_layout()

    def status(self, load_engines: bool = False) -> dict[str, Any]:
        """The agent's full status (backends, device): for `device check` only, never while following a job.
        ``load_engines``: each active model's engine is loaded in its runtime too (`device check`, `status`)."""
        self.require_agent()
        code, out, err = self.run(self.agent_command("status", *(["--load-engines"] if load_engines else [])),
                                  timeout=120)
        if code != 0:
            raise CheckFailed(f"{self.device_name}: `edgekit-agent status` failed: {err.strip()[-300:]}")
        return json.loads(out)
