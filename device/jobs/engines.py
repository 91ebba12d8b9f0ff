"""The engine cache: an engine is reused only for the same bundle, backend build and device.

An engine is built into a private directory and renamed into the cache when complete, so a killed build
leaves nothing a later job could mistake for an engine (``cleanup_builds`` removes the leftovers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from ..agent.spool import Spool, read_json, write_json_atomic
from ..agent.store import touch
from ..backends import Backend
from ..contract.manifest import Manifest
from .context import Job

ENGINE_META = "engine.json"
BUILD_PREFIX = ".build-"


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


def job_build_options(job: Job, options: Dict[str, Any], manifest: Manifest, files: Mapping[str, Path],
                      backend: Backend, model_name: str) -> Dict[str, Any]:
    """What the build needs besides the cache-key options: the input, the node table (a parser error can
    name the node), and the backend's own, which only the device knows (its caches, the files on disk)."""
    extra = dict(options, input_name=manifest.input_name, input_shape=manifest.input_shape,
                 graph=manifest.raw.get("host", {}).get("graphs", {}).get(model_name))
    extra.update(backend.job_options(job.spool.root, job.spool.engines, files))
    return extra


def build_engine(job: Job, backend: Backend, model: Path, key: str, options: Dict[str, Any],
                 what: str = "") -> Tuple[Path, Dict[str, Any], bool]:
    """Reuse a cached engine or build a new one privately and rename it into the cache."""
    final = job.spool.engines / key
    try:
        meta = read_json(final / ENGINE_META)
    except ValueError:  # a damaged engine.json: build again
        meta = None
        shutil.rmtree(str(final), ignore_errors=True)
    if meta is not None:
        touch(final)
        job.event("cache", "reusing cached {}engine {} (no build needed)".format(what, key[:12]), stage="build",
                  reused=True)
        return final, meta, True
    job.event("stage", "building {} {}engine".format(backend.name, what), stage="build", reused=False)
    meta = _build_privately(job, backend, model, key, options, final)
    job.event("progress", "engine built in {:.1f}s".format(meta.get("build_s", 0.0)))
    return final, meta, False


def _build_privately(job: Job, backend: Backend, model: Path, key: str, options: Dict[str, Any],
                     final: Path) -> Dict[str, Any]:
    """Build in a directory of this process's own, then rename it to ``final``: an engine appears whole or
    not at all, and a failed build frees its space."""
    work = job.spool.engines / "{}{}-{}".format(BUILD_PREFIX, key[:16], os.getpid())
    shutil.rmtree(str(work), ignore_errors=True)
    work.mkdir()
    try:
        meta = backend.build(model, work, options, lambda message: job.event("progress", message))
        meta.update({"key": key, "backend": backend.name, "identity": backend.identity(), "options": options,
                     "built_at": time.time(), "job": job.id})
        write_json_atomic(work / ENGINE_META, meta)
    except BaseException:
        shutil.rmtree(str(work), ignore_errors=True)  # a half-built engine is never kept (nor its space)
        raise
    if final.exists():  # another run finished the same build first; keep that one
        shutil.rmtree(str(work))
    else:
        os.rename(str(work), str(final))
    return meta


def cleanup_builds(spool: Spool) -> None:
    """Remove private build directories an earlier (killed) agent left behind."""
    for path in spool.engines.glob(BUILD_PREFIX + "*"):
        shutil.rmtree(str(path), ignore_errors=True)
