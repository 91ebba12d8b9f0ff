"""Run history: one SQLite row per job with the full report, for `report`, `compare` and budgets."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    job TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    report TEXT NOT NULL
)
"""


class History:
    def __init__(self, path: Path) -> None:
        self.root = path.parent
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path))
            self.db.execute(SCHEMA)
            self.db.execute("SELECT count(*) FROM runs").fetchone()
        except (OSError, sqlite3.OperationalError) as exc:  # a full or read-only disk: the run goes unrecorded
            if "locked" in str(exc):
                raise
            unrecorded(path, None, None, exc)
            self.db = sqlite3.connect(":memory:")
            self.db.execute(SCHEMA)
        except sqlite3.DatabaseError as exc:  # damaged (a crash mid-write): set aside, never in the way
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            path.replace(aside)
            sys.stderr.write(f"warning: the run history {path} was unreadable ({exc}); moved it to {aside} and "
                             "started a new one\n")
            self.db = sqlite3.connect(str(path))
            self.db.execute(SCHEMA)

    def record(self, device: str, report: dict[str, Any]) -> bool:
        """One row per job. A host disk that is full or read-only loses the row, not the run: the device keeps
        its report, so the push still prints it and says how to record it later."""
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                                (report["job"], device, report.get("model"), report.get("status", "unknown"),
                                 time.time(), json.dumps(report)))
        except sqlite3.DatabaseError as exc:  # "database or disk is full", "attempt to write a readonly database"
            unrecorded(self.root / "history.db", device, report.get("job"), exc)
            return False
        return True

    def run_dir(self, job: str) -> Path:
        """Where a run's files live beside the database: report.json and its plots."""
        return self.root / "runs" / job

    def get(self, job: str) -> Optional[dict[str, Any]]:
        row = self.db.execute("SELECT device, report FROM runs WHERE job = ?", (job,)).fetchone()
        return dict(json.loads(row[1]), device=row[0]) if row else None

    def latest(self, device: Optional[str] = None, offset: int = 0, status: Optional[str] = None
               ) -> Optional[dict[str, Any]]:
        """The newest run (``offset`` back), of ``device`` and with ``status`` when given (``compare`` wants
        finished runs, not a job still in flight)."""
        where = [(clause, value) for clause, value in (("device = ?", device), ("status = ?", status)) if value]
        query = "SELECT device, report FROM runs {} ORDER BY created DESC LIMIT 1 OFFSET ?".format(
            ("WHERE " + " AND ".join(clause for clause, _ in where)) if where else "")
        row = self.db.execute(query, (*[value for _, value in where], offset)).fetchone()
        return dict(json.loads(row[1]), device=row[0]) if row else None

    def run(self, job: Optional[str] = None) -> dict[str, Any]:
        """``edgekit report``: the run ``job``, by default the last; a missing one is a usage error."""
        stored = self.get(job) if job else self.latest()
        if stored is None:
            raise ConfigError(f"no run {job!r} in the history" if job
                              else "the run history is empty; run `edgekit push`")
        return stored

    def compared(self, old: Optional[str] = None, new: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``edgekit compare``: two runs, by default the last two finished ones (not a job still in flight)."""
        before = self.get(old) if old else self.latest(offset=1, status="done")
        after = self.get(new) if new else self.latest(status="done")
        if before is None or after is None:
            raise ConfigError("need two successful runs in the history (or two job ids) to compare")
        return before, after

    def last_job(self, device: str) -> str:
        """``edgekit status``: the job last published to ``device``."""
        last = self.latest(device)
        if last is None:
            raise ConfigError(f"no job on record for {device}; pass a job id")
        return last["job"]

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT job, device, model, status, created FROM runs ORDER BY created DESC LIMIT ?",
                               (limit,)).fetchall()
        return [dict(zip(("job", "device", "model", "status", "created"), row)) for row in rows]


def unrecorded(where: Path, device: Optional[str], job: Optional[str], exc: BaseException) -> None:
    """The one warning line for a run the host could not write down (the device still has its report)."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    what = f"job {job} was not recorded in" if job else "this run will not be recorded: cannot write"
    again = f"`edgekit status {device} {job}`" if device and job else "`edgekit status <device> <job>`"
    sys.stderr.write(f"warning: {what} {where} ({reason}); free space on the host, then {again} records it from "
                     "the device's report\n")
