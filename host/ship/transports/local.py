"""The built-in ``local`` device: an agent root on this machine, the agent started like its unit starts it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ....device.agent.admin import agent_running, open_root
from ....device.agent.admin import status as agent_status
from ....device.contract.service import exec_start
from ...errors import CheckFailed
from .client import SpoolClient
from .fs import LocalFS


def agent_command() -> str:
    """The installed ``edgekit-agent`` next to this interpreter (what install-service writes too)."""
    beside = Path(sys.executable).with_name("edgekit-agent")
    return str(beside) if beside.exists() else (shutil.which("edgekit-agent") or "edgekit-agent")


class LocalTransport(SpoolClient):
    name = "local"

    def __init__(self, root: str, device_name: str = "local") -> None:
        self.spool = open_root(Path(root).expanduser())
        super().__init__(device_name, LocalFS(self.spool.root))

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

    def agent_alive(self, patience: float = 3.0) -> bool:
        """The agent's lock is exact on this machine; the heartbeat is for devices across a network."""
        return agent_running(self.spool.root)

    def status(self, load_engines: bool = False) -> dict[str, Any]:
        return agent_status(self.spool.root, load_engines)

    def revive_agent(self) -> bool:
        self.ensure_agent()
        return True
