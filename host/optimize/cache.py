"""Each stage's output on its own directory, ``<state>/cache/<stage>/<key>/``, safe under concurrent writers,
crashes and damage.

A writer computes into a private temporary directory (unique per process and call) and publishes it
with one ``rename``; a directory that exists is therefore complete. Writers of the same key take a
file lock first, so five cold-cache pushes at once compute each stage once: the others wait, then use
the winner's result. Where locks do not work (some network file systems) the rename still decides:
the loser discards its copy and reads the winner's.

An entry records the size and sha256 of every file it holds (``stage.json``), checked the first time a
process reuses it: a file truncated by a crash or a full disk, or changed by hand, would otherwise be
shipped, or fail every later push deep inside a reader. A damaged entry is discarded with one line and
the stage runs again. Temporary directories of writers that died (SIGKILL) are removed by later writers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import CheckFailed, EdgekitError
from .fingerprint import file_hash

RESULT = "stage.json"
TMP_PREFIX = ".tmp-"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 8 << 20  # an error raised while less than this is free is blamed on the disk

Say = Callable[[str], None]


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: set[tuple[str, int]] = set()  # (entry, stage.json mtime): checked in this process

    def directory(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:32]

    def load(self, stage: str, key: str, say: Optional[Say] = None) -> Optional[dict[str, Any]]:
        """The stored result, or None when absent; a damaged or partial entry is discarded (and said)."""
        directory = self.directory(stage, key)
        if not directory.exists():
            return None
        saved, problem = self._read(directory, key)
        if problem is None:
            return saved
        self.discard(directory)
        if say is not None:
            say(f"cache: the {stage} stage's entry {directory} was damaged ({problem}); discarded, recomputing it")
        return None

    def _read(self, directory: Path, key: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """The entry and None, or None and what is wrong with it."""
        try:
            saved = json.loads((directory / RESULT).read_text())
            stamp = (str(directory), (directory / RESULT).stat().st_mtime_ns)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            return None, f"{RESULT} unreadable: {type(exc).__name__}"
        if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("contents"), dict):
            return None, f"{RESULT} is not a complete entry"
        if saved.pop("checksum", None) != checksum(saved):
            return None, f"{RESULT} changed since it was written"
        if stamp not in self._verified:
            problem = verify_contents(directory, saved["contents"])
            if problem:
                return None, problem
            self._verified.add(stamp)
        return saved, None

    def discard(self, directory: Path) -> None:
        """Move an entry aside (one rename: readers see it whole or not at all), then delete it."""
        stale = directory.with_name(f".stale-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            os.rename(directory, stale)
            shutil.rmtree(stale, ignore_errors=True)

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

    def sweep(self) -> None:
        """Remove what killed writers left (their temporary directories): they only take space."""
        if self.root.is_dir():
            for folder in self.root.iterdir():
                sweep_dead_writers(folder)

    def scratch(self, stage: str, key: str) -> Path:
        path = self.root / stage / f"{TMP_PREFIX}{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def publish(self, stage: str, key: str, work: Path, result: dict[str, Any], replace: bool = False) -> bool:
        """Write the result into ``work`` and rename it into place; False when another writer's copy won."""
        entry = json.loads(json.dumps(dict(result, key=key, contents=describe_contents(work)), default=_plain))
        (work / RESULT).write_text(json.dumps(dict(entry, checksum=checksum(entry)), indent=2))
        final = self.directory(stage, key)
        if replace and final.exists():  # --force: move the old one aside first (rename is atomic)
            self.discard(final)
        try:
            os.rename(work, final)
        except OSError:  # another writer published first: theirs is complete, keep it
            shutil.rmtree(work, ignore_errors=True)
            if self.load(stage, key) is None:
                raise
            return False
        self._verified.add((str(final), (final / RESULT).stat().st_mtime_ns))
        return True


def checksum(entry: dict[str, Any]) -> str:
    """sha256 of an entry's JSON (keys sorted): ``stage.json`` vouches for itself as for the files it lists."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def describe_contents(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of an entry by relative name: size and sha256."""
    return {path.relative_to(directory).as_posix(): {"size": path.stat().st_size, "sha256": file_hash(path)}
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != RESULT}


def verify_contents(directory: Path, contents: dict[str, Any]) -> Optional[str]:
    """None when every recorded file is there with its size and hash; else the first difference."""
    for name, expected in contents.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("size"):
            return f"{name} has {size} bytes, {expected.get('size')} were written"
        try:
            if file_hash(path) != expected.get("sha256"):
                return f"{name} changed since it was written"
        except OSError as exc:
            return f"{name} unreadable: {exc.strerror or exc}"
    return None


def sweep_dead_writers(folder: Path) -> None:
    """Remove temporary directories whose writer process is gone (killed mid-stage): they only take space."""
    if not folder.is_dir():
        return
    for path in folder.glob(f"{TMP_PREFIX}*"):
        parts = path.name.split("-")
        if len(parts) >= 4 and parts[-2].isdigit() and not _alive(int(parts[-2])):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_bytes(path: Path) -> Optional[int]:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            stat = os.statvfs(candidate)
            return stat.f_bavail * stat.f_frsize
    return None


def tree_bytes(path: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def disk_full(exc: BaseException, path: Path) -> bool:
    """The error came from a full disk: ENOSPC/EDQUOT, or any error while (almost) nothing is left free
    (writers such as torch.save and onnx wrap the OS error in their own exception types)."""
    seen: Optional[BaseException] = exc
    for _ in range(8):  # the OS error may be wrapped (``from None`` still keeps it as the context)
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, Exception) or isinstance(exc, EdgekitError):  # our own errors say what they are
        return False
    free = free_bytes(path)
    return free is not None and free < LOW_SPACE_BYTES


def disk_full_error(path: Path, what: str, written: int, need: int) -> CheckFailed:
    """One line: the directory, what was being written, how much room to make."""
    free = free_bytes(path) or 0
    return CheckFailed(f"the host's disk is full: {path} has {free / 1e6:.1f} MB free, and {what} needs about "
                       f"{need / 1e6:.0f} MB there (it had written {written / 1e6:.1f} MB); free space on that disk "
                       "and run again (cached stages are kept; nothing changed on the device)")


def _plain(value: Any) -> Any:
    """numpy scalars and paths in stage results become JSON numbers and strings."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
