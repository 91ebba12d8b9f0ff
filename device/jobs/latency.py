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
from typing import Any, Dict, List, Mapping

from ..agent.spool import read_json, write_json_atomic
from ..backends import Backend, get_backend
from ..benchmark import Plan
from ..contract.latency import LatencyPlanError, missing, parse_plan, table_key
from ..contract.manifest import Manifest
from ..contract.protocol import LATENCY
from ..contract.runtimes import baseline_precision, cpu_runtimes
from ..errors import JobError
from .context import Job
from .engines import build_options

WHOLE = "whole:"  # whole-model variants (the host's ``latency.WHOLE_LEVELS``) ...
BASELINE_VARIANT = "whole:baseline"  # ... this one at the report's baseline precision (target_speedup's reference)
WHOLE_ROUNDS = 5
WARMUP_RUNS = 3
PROGRESS_EVERY_S = 1.0
SAVE_EVERY = 8


def latency_backend(job: Job, manifest: Manifest, files: Mapping[str, Path], plan: Mapping[str, Any]) -> Backend:
    """The job's backend. ``auto`` picks among the CPU runtimes on the final model, so the table is measured
    on the one the unpruned model runs fastest on here (a short race on it, like auto's)."""
    if manifest.backend != "auto":
        backend = get_backend(manifest.backend)
        if backend.name not in cpu_runtimes():
            raise JobError("the latency model is measured on CPU runtimes only for now; {} is not one (use "
                           "prune.ratio on this device)".format(backend.name))
        return backend
    from ..backends import available

    have = available(cpu_runtimes())
    if not have:
        raise JobError("no CPU runtime is installed on this device to measure a latency model with")
    if len(have) == 1:
        return next(iter(have.values()))
    remembered = job.spool.root / LATENCY / "auto-{}.json".format(table_key(plan["graph"], {}, manifest.precision,
                                                                           plan["batch"], manifest.build))
    earlier = (read_json(remembered) or {}).get("backend")
    if earlier in have:  # raced before for this graph: a second push measures nothing
        return have[earlier]
    options = build_options(manifest.precision, [plan["batch"]], manifest.build)
    timing = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=int(plan["iterations"]), cv_warn_percent=1e9)
    times = {}
    for name, backend in have.items():
        engine = _load(backend, files[plan["variants"][BASELINE_VARIANT]], job.folder / "latency-race", options)
        try:
            times[name] = _median(engine, plan["batch"], timing, WARMUP_RUNS)
        finally:
            engine.close()
    chosen = min(times, key=lambda name: times[name])
    remembered.parent.mkdir(exist_ok=True)
    write_json_atomic(remembered, {"backend": chosen, "ms": times})
    job.event("progress", "latency model on {} (auto: the unpruned model's median {})".format(chosen, ", ".join(
        "{} {:.3f} ms".format(name, ms) for name, ms in sorted(times.items()))), stage="latency")
    return have[chosen]


def run_latency_job(job: Job, manifest: Manifest, files: Mapping[str, Path]) -> Dict[str, Any]:
    """Measure what the cache lacks, within the plan's time bound; the report carries the whole table."""
    try:
        plan = parse_plan(manifest.raw.get("latency"), manifest.files)
    except LatencyPlanError as exc:
        raise JobError(str(exc)) from None
    backend = latency_backend(job, manifest, files, plan)
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
    """Time every layer variant, then the whole models together (``_time_wholes``); stop, keeping what was
    measured, at the time bound."""
    start = last = time.monotonic()
    work = job.folder / "latency-build"
    timing = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=int(plan["iterations"]), cv_warn_percent=1e9)
    layers = [ident for ident in todo if not ident.startswith(WHOLE)]
    for done, ident in enumerate(layers, 1):
        _check_bound(start, plan, path, table, done - 1, len(todo))
        engine = _load(backend, files[plan["variants"][ident]], work / "layer", options)
        try:
            table[ident] = _median(engine, plan["batch"], timing, WARMUP_RUNS)
        finally:
            engine.close()
        if done % SAVE_EVERY == 0:
            _save(path, table)
        if time.monotonic() - last > PROGRESS_EVERY_S or done == len(layers):
            last = time.monotonic()
            job.event("progress", "latency model: {}/{} variants measured ({:.0f} s)".format(
                done, len(todo), last - start), stage="latency", done=done, total=len(todo))
    wholes = [ident for ident in todo if ident.startswith(WHOLE)]
    if wholes:
        _check_bound(start, plan, path, table, len(layers), len(todo))
        table.update(_time_wholes(backend, files, plan, wholes, options, manifest, work))
        job.event("progress", "latency model: {}/{} variants measured ({:.0f} s)".format(
            len(todo), len(todo), time.monotonic() - start), stage="latency", done=len(todo), total=len(todo))
    _save(path, table)


def _check_bound(start: float, plan: Mapping[str, Any], path: Path, table: Dict[str, float], done: int,
                 total: int) -> None:
    if time.monotonic() - start > plan["max_seconds"]:
        _save(path, table)
        raise JobError("the latency model needs more than its bound of {:.0f} s on this device ({} of {} "
                       "variants measured and kept: push again to go on, or raise prune.latency_budget_s)".format(
                           plan["max_seconds"], done, total))


def _time_wholes(backend: Backend, files: Mapping[str, Path], plan: Mapping[str, Any], wholes: list,
                 options: Dict[str, Any], manifest: Manifest, work: Path) -> Dict[str, float]:
    """The whole models in alternating rounds (a busy device slows them alike): median over every round."""
    engines = {}
    try:
        for ident in wholes:
            precision = baseline_precision(backend.name) if ident == BASELINE_VARIANT else None
            engines[ident] = _load(backend, files[plan["variants"][ident]], work / ident.replace(":", "-"),
                                   dict(options, precision=precision) if precision else options)
        samples = {ident: [] for ident in wholes}  # type: Dict[str, List[float]]
        timing = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=int(plan["iterations"]) * 2, cv_warn_percent=1e9)
        for round_index in range(WHOLE_ROUNDS):
            for ident, engine in engines.items():
                warmup = WARMUP_RUNS if round_index == 0 else 1
                samples[ident].extend(_samples(engine, plan["batch"], timing, warmup))
        return {ident: float(statistics.median(values)) for ident, values in samples.items()}
    finally:
        for engine in engines.values():
            engine.close()
        shutil.rmtree(str(work), ignore_errors=True)


def _load(backend: Backend, model: Path, work: Path, options: Dict[str, Any]) -> Any:
    """A variant built into ``work`` (replaced each time) and loaded."""
    shutil.rmtree(str(work), ignore_errors=True)
    work.mkdir(parents=True)
    meta = backend.build(model, work, options, lambda message: None)
    return backend.load(work, meta)


def _samples(engine: Any, batch: int, plan: Plan, warmup: int) -> List[float]:
    """``warmup`` untimed runs (the runtime's threads and caches), then ``plan``'s timed ones."""
    untimed = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=1, cv_warn_percent=1e9)
    for _ in range(warmup):
        engine.benchmark(batch, untimed)
    return list(engine.benchmark(batch, plan)["samples_ms"])


def _median(engine: Any, batch: int, plan: Plan, warmup: int) -> float:
    return float(statistics.median(_samples(engine, batch, plan, warmup)))


def _save(path: Path, table: Dict[str, float]) -> None:
    write_json_atomic(path, {"ms": table, "saved": time.time()})
