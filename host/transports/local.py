"""The built-in ``local`` device: an agent root on this machine, the agent started like its unit starts it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from edgekit.device.agent import agent_running
from edgekit.device.agent import status as agent_status
from edgekit.device.service import exec_start
from edgekit.device.spool import Spool, read_events

from ..errors import CheckFailed
from .base import BytesProgress, Transport


def agent_command() -> str:
    """The installed ``edgekit-agent`` next to this interpreter (what install-service writes too)."""
    beside = Path(sys.executable).with_name("edgekit-agent")
    return str(beside) if beside.exists() else (shutil.which("edgekit-agent") or "edgekit-agent")


class LocalTransport(Transport):
    name = "local"

    def __init__(self, root: str) -> None:
        self.spool = Spool(Path(root).expanduser()).ensure()

    def ensure_agent(self) -> None:
        if agent_running(self.spool.root):
            return
        log = open(self.spool.root / "agent.log", "ab")
        subprocess.Popen(exec_start(agent_command(), str(self.spool.root)), stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if agent_running(self.spool.root):
                return
            time.sleep(0.05)
        raise CheckFailed(f"the local agent did not start; see {self.spool.root / 'agent.log'}")

    def trust(self, public_line: str) -> None:
        path = self.spool.trusted_keys
        lines = path.read_text().splitlines() if path.exists() else []
        if public_line.split()[1] not in {line.split()[1] for line in lines if len(line.split()) > 1}:
            with open(path, "a") as handle:
                handle.write(public_line + "\n")
            os.chmod(path, 0o600)

    def missing(self, hashes: list[str]) -> list[str]:
        return [sha for sha in hashes if not self.spool.has_blob(sha)]

    def upload(self, sha: str, path: Path, progress: BytesProgress) -> None:
        self.spool.add_blob_file(path, sha)
        progress(path.stat().st_size)

    def publish(self, job: str, manifest: bytes, signature: bytes) -> None:
        self.spool.publish(job, manifest, signature)

    def events(self, job: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        return read_events(self.spool.jobs / job / "events.jsonl", offset)

    def state(self, job: str) -> Optional[dict[str, Any]]:
        state = self.spool.state(job) if (self.spool.jobs / job).is_dir() else None
        return state or {"status": "queued" if (self.spool.queue / job).is_dir() else "unknown"}

    def report(self, job: str) -> Optional[dict[str, Any]]:
        return self.spool.report(job) if (self.spool.jobs / job).is_dir() else None

    def agent_alive(self) -> bool:
        return agent_running(self.spool.root)

    def status(self) -> dict[str, Any]:
        return agent_status(self.spool.root)

    def revive_agent(self) -> bool:
        self.ensure_agent()
        return True
