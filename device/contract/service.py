"""The systemd unit that starts the agent at boot (pure text; writing it is the CLI's job)."""

from __future__ import annotations

import shlex
from typing import List, Optional

CONFIG_ERROR_EXIT = 2


def exec_start(agent: str, root: str) -> List[str]:
    return [agent, "serve", "--root", root]


def unit_text(agent: str, root: str, user: Optional[str], system: bool) -> str:
    """A unit that restarts on crashes but not on a configuration error (exit 2), and runs unprivileged.

    ``user`` is set only for a system unit; a user unit already runs as its owner. There is no start
    limit (``StartLimitIntervalSec=0``): jobs run in a worker the agent supervises, so job faults never
    stop the agent, and whatever does stop it (an OOM kill, a failing disk) must not leave the device
    without an agent once systemd's burst counter is spent; ``RestartSec`` keeps the retries gentle.
    """
    lines = [
        "[Unit]",
        "Description=edgekit agent: builds, validates and benchmarks models pushed by edgekit",
        "After=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
    ]
    if system and user:
        lines.append("User={}".format(user))
    lines += [
        "ExecStart={}".format(" ".join(shlex.quote(part) for part in exec_start(agent, root))),
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",
        "RestartPreventExitStatus={}".format(CONFIG_ERROR_EXIT),
        "Environment=PYTHONUNBUFFERED=1",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "",
        "[Install]",
        "WantedBy={}".format("multi-user.target" if system else "default.target"),
        "",
    ]
    return "\n".join(lines)


def parse_exec_start(text: str) -> List[str]:
    """The ExecStart command line of a unit, split like systemd would (used by tests and `check`)."""
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):])
    raise ValueError("unit has no ExecStart line")
