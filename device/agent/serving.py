"""A serving map: the active model served by one engine per batch size, when no single engine is as fast at
every batch size the project benchmarks (``precision = "auto"``, ``jobs.auto.serve``).

It is an entry of the engine cache like any engine (``engines/<key>/engine.json``), holding no model file but
``serve``: batch size → the key of the engine serving it. ``current`` and ``previous`` point at it as at an
engine, so switching, rollback (``previous``, or ``to`` = its key) and repair work unchanged; what keeps an
engine alive (``current``, ``previous``, a recent report) keeps the engines of its map alive too, and a map one of
whose engines is gone is as broken as a missing engine. Its key is the hash of the map, so the same choice
twice is the same entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping

from .spool import read_json, write_json_atomic

ENGINE_META = "engine.json"  # the engine cache's metadata file (jobs/engines.py)
SERVE = "serve"


def members(engine: Path) -> Dict[int, Path]:
    """Batch size → engine directory, for a serving map; {} for a plain engine (or an unreadable one)."""
    try:
        meta = read_json(engine / ENGINE_META)
    except (OSError, ValueError):
        return {}
    serve = meta.get(SERVE) if isinstance(meta, dict) else None
    if not isinstance(serve, dict):
        return {}
    return {int(batch): engine.parent / str(key) for batch, key in serve.items()
            if str(batch).isdigit() and "/" not in str(key) and not str(key).startswith(".")}


def write_map(engines: Path, served: Mapping[int, str], meta: Mapping[str, Any]) -> Path:
    """The serving map of ``served`` (batch → engine key) in the engine cache, written privately and renamed
    into place (a map appears whole or not at all); an identical map already there is reused."""
    serve = {str(b): served[b] for b in sorted(served)}
    key = "serve-" + hashlib.sha256(json.dumps(serve, sort_keys=True).encode("utf-8")).hexdigest()[:56]
    final = engines / key
    if (final / ENGINE_META).is_file():
        os.utime(str(final))
        return final
    work = engines / ".build-{}-{}".format(key[:22], os.getpid())
    shutil.rmtree(str(work), ignore_errors=True)
    work.mkdir()
    write_json_atomic(work / ENGINE_META, dict(meta, key=key, kind="serving", **{SERVE: serve}))
    shutil.rmtree(str(final), ignore_errors=True)  # a damaged earlier map of the same key
    os.rename(str(work), str(final))
    return final
