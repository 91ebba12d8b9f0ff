"""Each stage's output on its own directory, ``<state>/cache/<stage>/<key>/``, safe under concurrent writers.

A writer computes into a private temporary directory (unique per process and call) and publishes it
with one ``rename``; a directory that exists is therefore complete. Writers of the same key take a
file lock first, so five cold-cache pushes at once compute each stage once: the others wait, then use
the winner's result. Where locks do not work (some network file systems) the rename still decides:
the loser discards its copy and reads the winner's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

RESULT = "stage.json"


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:32]

    def load(self, stage: str, key: str) -> Optional[dict[str, Any]]:
        """The stored result, or None when absent or unreadable (then the stage simply runs again)."""
        try:
            saved = json.loads((self.directory(stage, key) / RESULT).read_text())
        except (OSError, ValueError):
            return None
        return saved if saved.get("key") == key else None

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive per (stage, key) across processes; released when the process dies."""
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{key[:32]}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def scratch(self, stage: str, key: str) -> Path:
        path = self.root / stage / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def publish(self, stage: str, key: str, work: Path, result: dict[str, Any], replace: bool = False) -> bool:
        """Write the result into ``work`` and rename it into place; False when another writer's copy won."""
        (work / RESULT).write_text(json.dumps(dict(result, key=key), indent=2, default=_plain))
        final = self.directory(stage, key)
        if replace and final.exists():  # --force: move the old one aside first (rename is atomic)
            stale = final.with_name(f".stale-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(OSError):
                os.rename(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(work, final)
        except OSError:  # another writer published first: theirs is complete, keep it
            shutil.rmtree(work, ignore_errors=True)
            if self.load(stage, key) is None:
                raise
            return False
        return True


def _plain(value: Any) -> Any:
    """numpy scalars and paths in stage results become JSON numbers and strings."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
