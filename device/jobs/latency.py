"""The latency-model job: time every width variant the host sent, on this device's backend and precision.

Each variant is one layer at one (input, output) width, or a whole model that ties the layers' sum to what a
whole model costs. Tables are cached in ``<root>/latency/<key>.json`` (key: model graph, backend identity,
precision, batch, build options), written as the job goes, so a second push measures nothing and a job cut by
its time bound (``max_seconds``) resumes where it stopped. Progress is an event per few variants.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Mapping

from ..agent.spool import read_json, write_json_atomic
from ..backends import Backend, get_backend
from ..benchmark import Plan
from ..contract.benchmark import baseline_precision
from ..contract.latency import LatencyPlanError, missing, parse_plan, table_key
from ..contract.manifest import Manifest
from ..contract.protocol import LATENCY
from ..contract.runtimes import cpu_runtimes
from ..errors import JobError
from .context import Job
from .engines import build_options

BASELINE_VARIANT = "whole:baseline"  # timed at the report's baseline precision (target_speedup's reference)
PROGRESS_EVERY_S = 1.0
SAVE_EVERY = 8


def latency_backend(manifest: Manifest) -> Backend:
    """The job's backend; ``auto`` times on the first CPU runtime present (auto picks among them later)."""
    if manifest.backend != "auto":
        backend = get_backend(manifest.backend)
    else:
        from ..backends import available

        have = available(cpu_runtimes())
        if not have:
            raise JobError("no CPU runtime is installed on this device to measure a latency model with")
        backend = next(iter(have.values()))
    if backend.name not in cpu_runtimes():
        raise JobError("the latency model is measured on CPU runtimes only for now; {} is not one (use "
                       "prune.ratio on this device)".format(backend.name))
    return backend


def run_latency_job(job: Job, manifest: Manifest, files: Mapping[str, Path]) -> Dict[str, Any]:
    """Measure what the cache lacks, within the plan's time bound; the report carries the whole table."""
    try:
        plan = parse_plan(manifest.raw.get("latency"), manifest.files)
    except LatencyPlanError as exc:
        raise JobError(str(exc)) from None
    backend = latency_backend(manifest)
    options = build_options(manifest.precision, [plan["batch"]], manifest.build)
    key = table_key(plan["graph"], backend.identity(), manifest.precision, plan["batch"], options)
    folder = job.spool.root / LATENCY
    folder.mkdir(exist_ok=True)
    path = folder / (key + ".json")
    stored = read_json(path) or {}
    table = dict(stored.get("ms", {}))  # type: Dict[str, float]
    todo = missing(plan, table)
    if not todo:
        job.event("cache", "latency model cached for this device ({} variants): nothing to measure".format(
            len(table)), stage="latency", cached=True)
    else:
        job.event("stage", "measuring a latency model: {} variant(s) at batch {} on {} ({}), at most {:.0f} s".format(
            len(todo), plan["batch"], backend.name, manifest.precision, plan["max_seconds"]), stage="latency",
            total=len(todo))
        _measure(job, backend, files, plan, todo, table, options, manifest, path)
    return {"job": job.id, "status": "done", "kind": "latency_model", "model": manifest.model,
            "backend": backend.name, "backend_describe": backend.describe(), "precision": manifest.precision,
            "batch": plan["batch"], "table_key": key, "measured": len(todo),
            "ms": {ident: table[ident] for ident in plan["variants"]}}


def _measure(job: Job, backend: Backend, files: Mapping[str, Path], plan: Mapping[str, Any], todo: list,
             table: Dict[str, float], options: Dict[str, Any], manifest: Manifest, path: Path) -> None:
    """Build, load and time each variant; stop (keeping what was measured) at the time bound."""
    start = last = time.monotonic()
    work = job.folder / "latency-build"
    timing = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=int(plan["iterations"]), cv_warn_percent=1e9)
    for done, ident in enumerate(todo, 1):
        if time.monotonic() - start > plan["max_seconds"]:
            _save(path, table)
            raise JobError("the latency model needs more than its bound of {:.0f} s on this device ({} of {} "
                           "variants measured and kept: push again to go on, or raise prune.latency_budget_s)".format(
                               plan["max_seconds"], done - 1, len(todo)))
        precision = baseline_precision(manifest.precision, backend.name) if ident == BASELINE_VARIANT else None
        variant_options = dict(options, precision=precision) if precision else options
        table[ident] = _time_one(backend, files[plan["variants"][ident]], work, variant_options, plan["batch"],
                                 timing)
        if done % SAVE_EVERY == 0:
            _save(path, table)
        if time.monotonic() - last > PROGRESS_EVERY_S or done == len(todo):
            last = time.monotonic()
            job.event("progress", "latency model: {}/{} variants measured ({:.0f} s)".format(
                done, len(todo), last - start), stage="latency", done=done, total=len(todo))
    _save(path, table)


def _time_one(backend: Backend, model: Path, work: Path, options: Dict[str, Any], batch: int, plan: Plan) -> float:
    """Median latency (ms) of one variant: built privately, one untimed run, then ``plan``'s iterations."""
    shutil.rmtree(str(work), ignore_errors=True)
    work.mkdir()
    try:
        meta = backend.build(model, work, options, lambda message: None)
        engine = backend.load(work, meta)
        try:
            engine.benchmark(batch, Plan(warmup_s=0.0, duration_s=0.0, min_iterations=1, cv_warn_percent=1e9))
            result = engine.benchmark(batch, plan)
        finally:
            engine.close()
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
    return float(statistics.median(result["samples_ms"]))


def _save(path: Path, table: Dict[str, float]) -> None:
    write_json_atomic(path, {"ms": table, "saved": time.time()})
