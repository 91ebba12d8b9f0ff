"""Are the active models servable? ``current`` of each model checked, and repaired when its engine is gone.

An engine can vanish behind ``current`` (deleted by hand, a disk restored from backup, a store emptied):
``status`` must not report such a model as active. ``model_health`` says what is wrong and which engine
would serve; ``repair`` (run by the agent at start and between jobs) points ``current`` back at
``previous`` when the current engine is gone and the previous one is whole, and leaves a note saying so.
Loading an engine needs its runtime (a CUDA context for TensorRT), so it is done only on request.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .serving import members
from .spool import Spool, _symlink_atomic, read_json, write_json_atomic

ENGINE_META = "engine.json"  # the engine cache's metadata file (jobs/engines.py)
REPAIRED = "repaired.json"  # models/<name>/repaired.json: the last repair, for status


def engine_problem(engine: Optional[Path], load: bool = False) -> Optional[str]:
    """None when the engine directory is whole (and, with ``load``, its runtime loads it); else what is wrong."""
    if engine is None:
        return "no engine"
    if not engine.is_dir():
        return "its engine {} is gone".format(engine.name[:12])
    try:
        meta = read_json(engine / ENGINE_META)
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return "its engine {} has no readable {}".format(engine.name[:12], ENGINE_META)
    served = members(engine)
    for batch, member in sorted(served.items()):  # a serving map: each engine of it must be whole
        problem = engine_problem(member, load)
        if problem:
            return "{} (it serves batch {})".format(problem, batch)
    if served:
        return None
    name = meta.get("file")
    if isinstance(name, str) and not (engine / name).is_file():
        return "its engine file {}/{} is gone".format(engine.name[:12], name)
    if isinstance(name, str) and (engine / name).stat().st_size == 0:
        return "its engine file {}/{} is empty".format(engine.name[:12], name)
    return _load_problem(engine, meta) if load else None


def _load_problem(engine: Path, meta: Dict[str, Any]) -> Optional[str]:
    from ..backends import get_backend

    try:
        loaded = get_backend(str(meta.get("backend", "onnxruntime"))).load(engine, meta)
        loaded.close()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return "its engine {} fails to load ({}: {})".format(engine.name[:12], type(exc).__name__, first)
    return None


def _target(spool: Spool, model: str, link: str) -> Optional[Path]:
    path = spool.models / model / link
    if not path.is_symlink():
        return None
    return (path.parent / os.readlink(str(path))).resolve()


def model_health(spool: Spool, load: bool = False) -> Dict[str, Dict[str, Any]]:
    """Per active model: its ``current`` engine, what is wrong with it, and which engine would serve instead."""
    health = {}
    if not spool.models.is_dir():
        return health
    for folder in sorted(p for p in spool.models.iterdir() if p.is_dir()):
        current, previous = _target(spool, folder.name, "current"), _target(spool, folder.name, "previous")
        problem = engine_problem(current, load) if current is not None else None
        fallback = None
        if problem and previous is not None and previous != current and engine_problem(previous, load) is None:
            fallback = previous.name
        entry = {"engine": current.name if current else None, "ok": problem is None, "problem": problem,
                 "serving": (current.name if current else None) if problem is None else fallback}
        try:
            note = read_json(folder / REPAIRED)
        except (OSError, ValueError):
            note = None
        if note and note.get("to") == entry["engine"]:
            entry["repaired"] = note
        health[folder.name] = entry
    return health


def repair(spool: Spool, log: Callable[[str], None]) -> List[str]:
    """Point ``current`` at ``previous`` for every model whose current engine is gone; the models repaired."""
    repaired = []
    for model, entry in model_health(spool).items():
        previous = _target(spool, model, "previous")
        if entry["ok"] or entry["serving"] is None or previous is None:
            continue
        folder = spool.models / model
        _symlink_atomic(folder / "current", os.readlink(str(folder / "previous")))
        (folder / "previous").unlink()
        write_json_atomic(folder / REPAIRED, {"from": entry["engine"], "to": previous.name,
                                              "reason": entry["problem"], "at": time.time()})
        log("model {}: {}; switched current back to the previous engine {}".format(
            model, entry["problem"], previous.name[:12]))
        repaired.append(model)
    return repaired
