"""A rollback request: a signed manifest that asks the agent to serve an engine it already has.

It travels like a bundle (published into queue/, signed by a trusted host key, checked before anything
else), so switching back is as authorised as switching forward, and the agent stays the only writer of
``current``. ``to`` names the engine (its key under engines/); without it the agent takes ``previous``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

from .manifest import SCHEMA_VERSION, ManifestError, is_safe_name

ROLLBACK = "rollback"


def rollback_manifest(model: str, to: Optional[str], issued: float) -> Dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "action": ROLLBACK, "model": model, "to": to, "issued": issued}


def rollback_request(payload: bytes) -> Optional[Tuple[str, Optional[str]]]:
    """(model, engine key or None) when the signed manifest asks for a rollback; None for a bundle."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None  # the bundle parser says what is wrong with it
    if not isinstance(data, dict) or data.get("action") != ROLLBACK:
        return None
    model, to = data.get("model"), data.get("to")
    if not is_safe_name(model):
        raise ManifestError("rollback: model name {!r} must be letters, digits, '.', '_' or '-'".format(model))
    if to is not None and not is_safe_name(to):
        raise ManifestError("rollback: 'to' must be an engine key, got {!r}".format(to))
    return model, to
