"""Run a signed rollback request: point ``current`` back at an engine the device built and validated before.

Nothing is built or measured: the engine was validated when it was first served. What was ``current``
becomes ``previous``, so a second rollback undoes the first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from .. import __version__
from ..agent.serving import members
from ..agent.spool import read_json
from ..errors import JobError
from .context import Job
from .engines import ENGINE_META


def roll_back(job: Job, model: str, to: Optional[str], signer: str) -> Dict[str, Any]:
    spool = job.spool
    engine = _target(job, model, to)
    meta = read_json(engine / ENGINE_META) or {}
    job.event("stage", "rolling {} back to engine {}".format(model, engine.name[:12]), stage="switch")
    before = spool.switch(model, engine)
    return {"job": job.id, "status": "done", "action": "rollback", "model": model, "agent_version": __version__,
            "signer": signer, "engine_key": engine.name, "backend": meta.get("backend"),
            "precision": (meta.get("options") or {}).get("precision"), "serving": meta.get("serving"),
            "current": spool.current(model), "previous": before}


def _target(job: Job, model: str, to: Optional[str]) -> Path:
    """The engine to serve: the named one, or what ``previous`` points at; it must be a built engine here."""
    spool = job.spool
    if to is not None:
        engine = spool.engines / to
    else:
        link = spool.models / model / "previous"
        if not link.is_symlink():
            raise JobError("{} has no previous engine on this device; nothing was changed".format(model))
        engine = Path(os.path.normpath(str(link.parent / os.readlink(str(link)))))
    inside = os.path.dirname(os.path.abspath(str(engine))) == os.path.abspath(str(spool.engines))
    gone = [member for member in members(engine).values() if not (member / ENGINE_META).is_file()]
    if not inside or engine.is_symlink() or not (engine / ENGINE_META).is_file() or gone:
        raise JobError("engine {} of {} is no longer on this device (collected or never built); nothing was "
                       "changed: push the model you want instead".format(engine.name[:12], model))
    return engine
