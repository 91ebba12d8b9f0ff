"""What every step of a job needs: the spool it runs in, its id, and where it says what it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..agent.spool import Spool

Log = Callable[[str], None]


class Job:
    """One job in one spool. Its events go to the job's events.jsonl (the host streams them) and to the
    agent's log (journald), so a step reports progress the same way wherever it runs."""

    def __init__(self, spool: Spool, job_id: str, log: Log = lambda message: None) -> None:
        self.spool = spool
        self.id = job_id
        self.log = log

    @property
    def folder(self) -> Path:
        return self.spool.job_dir(self.id)

    def event(self, kind: str, message: str, **data: Any) -> None:
        self.spool.append_event(self.id, kind, message, **data)
        self.log("[{}] {}".format(self.id, message))
