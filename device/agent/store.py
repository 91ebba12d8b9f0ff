"""Disk management on the device: a store limit, a free-space floor, and LRU garbage collection.

What is never removed: the engines ``current`` and ``previous`` point at, the last ``keep_jobs`` jobs
(their folders, the engines their reports name, the blobs their manifests list), queued and unfinished
jobs with their blobs, and anything used in the last ``grace_s`` seconds (a push uploads its blobs
before it publishes the job that references them). Everything else goes oldest-use first, and only
while the store is over its limit or the disk under its floor; old job folders beyond ``keep_jobs`` go
always (they are small but would grow without bound).

Pure decisions (``plan_removals``) are apart from the file-system walk so they can be tested alone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from ..contract.manifest import MANIFEST, is_safe_name
from ..contract.protocol import STALE_PART_S, STORE_STATE
from .serving import members
from .spool import Spool, read_json, write_json_atomic

CONFIG = "config.json"
MB = 1024 * 1024


@dataclass(frozen=True)
class StoreConfig:
    """``<root>/config.json`` (written by the host from deploy.toml, or by hand)."""

    store_limit_mb: float = 4096.0
    min_free_mb: float = 128.0
    keep_jobs: int = 20
    grace_s: float = 600.0

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> StoreConfig:
        known = {k: data[k] for k in asdict(cls()) if k in data and isinstance(data[k], (int, float))}
        config = cls(**known)
        if config.keep_jobs < 1 or config.store_limit_mb <= 0 or config.min_free_mb < 0 or config.grace_s < 0:
            raise ValueError("{}: store_limit_mb must be > 0, min_free_mb and grace_s >= 0, keep_jobs >= 1".format(
                CONFIG))
        return config


def load_config(spool: Spool) -> StoreConfig:
    try:
        return StoreConfig.from_dict(read_json(spool.root / CONFIG) or {})
    except (OSError, ValueError):
        return StoreConfig()


def save_config(spool: Spool, values: Dict[str, Any]) -> StoreConfig:
    config = StoreConfig.from_dict(values)
    write_json_atomic(spool.root / CONFIG, {k: v for k, v in asdict(config).items() if k in values})
    return config


@dataclass(frozen=True)
class Item:
    """One removable thing: a blob file or an engine folder, with its size and last use."""

    kind: str
    path: Path
    size: int
    used: float


def plan_removals(items: Iterable[Item], protected: Set[Path], store_bytes: int, free_bytes: int,
                  config: StoreConfig, need_bytes: int, now: float) -> List[Item]:
    """Oldest-used first, until the store fits its limit and the disk keeps its floor plus ``need_bytes``."""
    limit, floor = int(config.store_limit_mb * MB), int(config.min_free_mb * MB) + need_bytes
    chosen = []
    for item in sorted(items, key=lambda i: i.used):
        if store_bytes <= limit and free_bytes >= floor:
            break
        if item.path in protected or now - item.used < config.grace_s:
            continue
        chosen.append(item)
        store_bytes -= item.size
        free_bytes += item.size
    return chosen


def tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(str(path)):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def touch(path: Path) -> None:
    """Mark a blob or engine as used now (LRU order); a failure (read-only disk) only loses the hint."""
    try:
        os.utime(str(path))
    except OSError:
        pass


def _manifest_blobs(folder: Path) -> Set[str]:
    try:
        data = json.loads((folder / MANIFEST).read_bytes().decode("utf-8"))
        return {str(entry["sha256"]) for entry in data.get("files", []) if isinstance(entry, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _real_dirs(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())


def protected_set(spool: Spool, config: StoreConfig) -> Tuple[Set[Path], List[Path]]:
    """(what must stay, job folders beyond keep_jobs that may go)."""
    keep: Set[Path] = set()
    active_engines: Set[str] = set()
    for model in _real_dirs(spool.models):
        for name in ("current", "previous"):
            link = model / name
            if link.is_symlink():
                target = (model / os.readlink(str(link))).resolve()
                keep.add(target)
                meta = read_json(target / "engine.json") if target.is_dir() else None
                if meta and meta.get("job"):
                    active_engines.add(str(meta["job"]))
    jobs = [j for j in _real_dirs(spool.jobs) if is_safe_name(j.name)]
    terminal = [j for j in jobs if spool.is_terminal(j.name)]
    recent = {j.name for j in terminal[-config.keep_jobs:]} | active_engines
    old = [j for j in terminal if j.name not in recent]
    live = [j for j in jobs if j not in old] + _real_dirs(spool.queue)
    for folder in live:
        keep.add(folder)
        keep.update(spool.blobs / sha for sha in _manifest_blobs(folder))
        report = read_json(folder / "report.json") if (folder / "report.json").is_file() else None
        if report and report.get("engine_key"):
            keep.add((spool.engines / str(report["engine_key"])).resolve())
    for engine in [p for p in keep if p.parent == spool.engines.resolve()]:  # a serving map keeps its engines
        keep.update(member.resolve() for member in members(engine).values())
    return keep, old


def inventory(spool: Spool) -> List[Item]:
    items = []
    for path in spool.blobs.iterdir() if spool.blobs.is_dir() else []:
        if path.name.endswith(".part") or path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        items.append(Item("blob", path, stat.st_size, stat.st_mtime))
    for path in _real_dirs(spool.engines):
        if path.name.startswith("."):
            continue
        items.append(Item("engine", path.resolve(), tree_size(path), path.stat().st_mtime))
    return items


def usage(spool: Spool) -> Dict[str, int]:
    disk = shutil.disk_usage(str(spool.root))
    store = sum(item.size for item in inventory(spool))
    return {"store_bytes": store, "free_bytes": disk.free, "total_bytes": disk.total}


def collect(spool: Spool, config: Optional[StoreConfig] = None, need_bytes: int = 0,
            now: Optional[float] = None) -> Dict[str, Any]:
    """Garbage-collect; returns what went, what is left, and whether ``need_bytes`` more fit above the floor."""
    config = config or load_config(spool)
    now = time.time() if now is None else now
    removed: List[str] = spool.sweep_parts(STALE_PART_S, now)
    keep, old_jobs = protected_set(spool, config)
    freed = 0
    for folder in old_jobs:
        freed += tree_size(folder)
        shutil.rmtree(str(folder), ignore_errors=True)
        removed.append("jobs/" + folder.name)
    items = inventory(spool)
    before = usage(spool)
    for item in plan_removals(items, keep, before["store_bytes"], before["free_bytes"], config, need_bytes, now):
        try:
            if item.kind == "blob":
                item.path.unlink()
            else:
                shutil.rmtree(str(item.path))
        except OSError:
            continue
        freed += item.size
        removed.append("{}s/{}".format(item.kind, item.path.name))
    after = usage(spool)
    floor = int(config.min_free_mb * MB)
    return {"removed": removed, "freed_bytes": freed, "store_bytes": after["store_bytes"],
            "free_bytes": after["free_bytes"], "min_free_bytes": floor,
            "store_limit_bytes": int(config.store_limit_mb * MB), "need_bytes": need_bytes,
            "fits": after["free_bytes"] - need_bytes >= floor, "config": asdict(config)}


def save_state(spool: Spool) -> None:
    """``store.json``: the disk's free space, the store's size and the limits in force, which the host reads to
    skip a gc of its own (``SpoolClient.room_known``). Written at the agent's start, after each job (when the
    host is already done with this device) and by `edgekit-agent gc`; a failure only costs the next push a
    remote gc."""
    config = load_config(spool)
    now = usage(spool)
    try:
        write_json_atomic(spool.root / STORE_STATE, {
            "store_bytes": now["store_bytes"], "free_bytes": now["free_bytes"],
            "min_free_bytes": int(config.min_free_mb * MB), "store_limit_bytes": int(config.store_limit_mb * MB),
            "config": asdict(config)})
    except OSError:
        pass
