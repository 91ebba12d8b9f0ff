"""Engine cache keys: an engine is reused only for the same bundle, backend build and device."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping

ENGINE_META = "engine.json"


def engine_key(file_hashes: Mapping[str, str], identity: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    """sha256 over the model files' hashes, the backend's identity (versions, device) and build options.

    The identity carries whatever makes an engine non-portable (TensorRT version, compute capability,
    DLA core, CPU model), so an engine built elsewhere never matches.
    """
    payload = {"files": dict(sorted(file_hashes.items())), "identity": dict(identity), "options": dict(options)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def build_options(precision: str, batch_sizes: Any, build: Mapping[str, Any]) -> Dict[str, Any]:
    """The options that change what gets built; anything else in the manifest does not split the cache."""
    options = {k: v for k, v in build.items() if k not in ("allow_fallback",)}
    options.update({"precision": precision, "batch_sizes": sorted(batch_sizes)})
    return options
