"""The latency-model job: time every width variant the host sent, on this device's backend and precision.

Each variant is one layer at one (input, output) width, or a whole model that ties the layers' sum to what a
whole model costs; in profile mode only whole models, each also run under the runtime's per-layer profiler.
Tables are cached in ``<root>/latency/<key>.json`` (key: model graph, backend identity, precision, batch, build
options), written as the job goes, so a second push measures nothing and a job cut by its time bound
(``max_seconds``) resumes where it stopped. Progress is an event per few variants.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from ..agent.spool import read_json, write_json_atomic
from ..backends import Backend
from ..benchmark import Plan
from ..contract.latency import LatencyPlanError, missing, parse_plan, table_key, variant_file
from ..contract.manifest import Manifest
from ..contract.model_files import ModelChoiceError, job_candidates
from ..contract.protocol import LATENCY
from ..contract.runtimes import AUTO, baseline_precision, cpu_runtimes, layer_profile
from ..cpu import describe_cpu
from ..errors import JobError
from .context import Job
from .engines import build_options
from .prepare import job_backends

WHOLE = "whole:"  # whole-model variants (the host's ``latency.WHOLE_LEVELS``) ...
BASELINE_VARIANT = "whole:baseline"  # ... this one at the report's baseline precision (target_speedup's reference)
WARMUP_RUNS = 3
PROGRESS_EVERY_S = 1.0
WHOLE_WARMUP_S = 0.1  # a whole model: warm-up, then at least this long timed (and the plan's iterations)
WHOLE_TIMED_S = 0.5
SAVE_EVERY = 8


def candidate_pairs(manifest: Manifest, plan: Mapping[str, Any]) -> Tuple[Dict[str, Backend], List[Tuple[str, str]]]:
    """The device's backends and the (runtime, precision) pairs a table may be measured on, as the push's race
    would build them: a profile plan needs a runtime with a per-layer profiler, any CPU runtime times layers."""
    backends, _ = job_backends(manifest)
    form = plan["variants"].get(BASELINE_VARIANT) or next(iter(plan["variants"].values()))
    pairs = job_candidates(list(backends), manifest.precision, list(form), manifest.build.get("int8_mode", "explicit"),
                           describe_cpu())
    profile = plan["mode"] == "profile"
    pairs = [(name, precision) for name, precision in pairs if (layer_profile(name) if profile else
             name in cpu_runtimes()) and manifest.precision in (AUTO, precision)]
    if not pairs:
        raise JobError("the latency model {} here: {} (use prune.ratio on this device)".format(
            "needs a runtime with a per-layer profiler (TensorRT)" if profile else "is measured on CPU runtimes or "
            "from TensorRT's per-layer profile", ", ".join(backends) or "no runtime"))
    return backends, pairs


def raced(job: Job, manifest: Manifest, files: Mapping[str, Path], plan: Mapping[str, Any], table: Mapping[str, float],
          chosen: Tuple[str, str], fresh: List[str]) -> Dict[str, Dict[str, float]]:
    """A check's whole models timed on every pair the push's race would build (``plan["race"]``): the final model's
    race keeps the fastest, and which that is can change with the widths (torchvision's ResNet-18 unpruned ran
    fastest on OpenVINO here, pruned to a sixth on ONNX Runtime at a quarter of OpenVINO's time), so a check
    timed on the table's pair alone would prune for the wrong engine. The table's own pair is read from the
    table when this job just measured it (``fresh``), else timed again with the others: every figure compared
    comes from the same few seconds (a check cached from a faster minute would win against fresh ones)."""
    backends, pairs = candidate_pairs(manifest, plan)
    checks = [ident for ident in plan["variants"] if ident != BASELINE_VARIANT]
    cpu = describe_cpu()
    reuse = all(ident in fresh for ident in checks)
    times = {ident: {"{} {}".format(*chosen): table[ident]} if reuse else {} for ident in checks}
    for name, precision in pairs:
        if (name, precision) == chosen and reuse:
            continue
        try:
            for ident in checks:
                variant_file(plan["variants"][ident], name, precision, manifest.build.get("int8_mode", "explicit"), cpu)
        except (KeyError, ModelChoiceError):
            continue  # the host wrote no file this pair builds from: the race could not build it either
        measured = _time_wholes(job, backends[name], files, plan, checks, precision, manifest,
                                job.folder / "latency-race")
        for ident, ms in measured.items():
            times[ident]["{} {}".format(name, precision)] = ms
    return times


def latency_target(job: Job, manifest: Manifest, files: Mapping[str, Path], plan: Mapping[str, Any]
                   ) -> Tuple[Backend, str]:
    """The (runtime, precision) the table is measured on: the job's own, or with ``auto`` in either, the pair the
    push's race will most likely pick here, the fastest on the unpruned model (a short race on it, like auto's;
    the host re-checks the guess against the precision the final model's race really picked)."""
    backends, pairs = candidate_pairs(manifest, plan)
    cpu = describe_cpu()
    form = plan["variants"].get(BASELINE_VARIANT) or next(iter(plan["variants"].values()))
    if len(pairs) == 1:
        return backends[pairs[0][0]], pairs[0][1]
    if BASELINE_VARIANT not in plan["variants"]:
        raise JobError("manifest latency: choosing among {} needs the unpruned model ({!r}) to race".format(
            ", ".join(" ".join(pair) for pair in pairs), BASELINE_VARIANT))
    remembered = job.spool.root / LATENCY / "auto-{}.json".format(table_key(
        plan["graph"], {"pairs": pairs}, manifest.precision, plan["batch"], manifest.build))
    earlier = (read_json(remembered) or {}).get("chosen")
    if earlier and tuple(earlier) in [tuple(pair) for pair in pairs]:  # raced before: a second push measures nothing
        return backends[earlier[0]], earlier[1]
    timing = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=int(plan["iterations"]), cv_warn_percent=1e9)
    times = {}
    for name, precision in pairs:
        backend = backends[name]
        options = _options(job, manifest, files, backend, form, precision, plan["batch"])
        engine = _load(backend, files[variant_file(form, name, precision, options.get("int8_mode", "explicit"), cpu)],
                       job.folder / "latency-race", options)
        try:
            times["{} {}".format(name, precision)] = (_median(engine, plan["batch"], timing, WARMUP_RUNS),
                                                      (name, precision))
        finally:
            engine.close()
    shown = min(times, key=lambda key: times[key][0])
    name, precision = times[shown][1]
    remembered.parent.mkdir(exist_ok=True)
    write_json_atomic(remembered, {"chosen": [name, precision], "ms": {k: v[0] for k, v in times.items()}})
    job.event("progress", "latency model on {} (auto: the unpruned model's median {})".format(shown, ", ".join(
        "{} {:.3f} ms".format(key, value[0]) for key, value in sorted(times.items()))), stage="latency")
    return backends[name], precision


def _options(job: Job, manifest: Manifest, files: Mapping[str, Path], backend: Backend, form: Mapping[str, str],
             precision: str, batch: int) -> Dict[str, Any]:
    """Build options as a push's: the precision, the batch, the device's keys, and what the backend reads
    besides (TensorRT: every form of the variant by kind, its plan picks the one its version builds)."""
    options = build_options(precision, [batch], manifest.build)
    options.update(input_name=manifest.input_name, input_shape=manifest.input_shape)
    options.update(backend.job_options(job.spool.root, job.spool.engines, {kind: files[name]
                                                                           for kind, name in form.items()}))
    return options


def run_latency_job(job: Job, manifest: Manifest, files: Mapping[str, Path]) -> Dict[str, Any]:
    """Measure what the cache lacks, within the plan's time bound; the report carries the whole table."""
    try:
        plan = parse_plan(manifest.raw.get("latency"), manifest.files)
    except LatencyPlanError as exc:
        raise JobError(str(exc)) from None
    backend, precision = latency_target(job, manifest, files, plan)
    key = table_key(plan["graph"], backend.identity(), precision, plan["batch"],
                    dict(build_options(precision, [plan["batch"]], manifest.build), mode=plan["mode"]))
    folder = job.spool.root / LATENCY
    folder.mkdir(exist_ok=True)
    path = folder / (key + ".json")
    stored = read_json(path) or {}
    table = dict(stored.get("ms", {}))  # type: Dict[str, float]
    profiles = dict(stored.get("profiles", {}))  # type: Dict[str, Dict[str, float]]
    todo = missing(plan, table)
    if not todo:
        job.event("cache", "latency model cached for this device ({} variants): nothing to measure".format(
            len(table)), stage="latency", cached=True)
    else:
        job.event("stage", "measuring a latency model: {} variant(s) at batch {} on {} ({}{}), at most {:.0f} s".format(
            len(todo), plan["batch"], backend.name, precision,
            ", per-layer profile of whole models" if plan["mode"] == "profile" else "", plan["max_seconds"]),
            stage="latency", total=len(todo))
        measure = _profile if plan["mode"] == "profile" else _measure
        measure(job, backend, files, plan, todo, table, profiles, precision, manifest, path)
    report = {"job": job.id, "status": "done", "kind": "latency_model", "model": manifest.model,
              "backend": backend.name, "backend_describe": backend.describe(), "precision": precision,
              "precision_requested": manifest.precision, "batch": plan["batch"], "table_key": key,
              "measured": len(todo), "mode": plan["mode"], "ms": {ident: table[ident] for ident in plan["variants"]}}
    if plan["mode"] == "profile":
        report["profiles"] = {ident: profiles[ident] for ident in plan["variants"] if ident in profiles}
    if plan["race"]:
        report["raced"] = raced(job, manifest, files, plan, table, (backend.name, precision), todo)
        report["ms"].update({ident: min(times.values()) for ident, times in report["raced"].items()})
    return report


def _measure(job: Job, backend: Backend, files: Mapping[str, Path], plan: Mapping[str, Any], todo: list,
             table: Dict[str, float], profiles: Dict[str, Dict[str, float]], precision: str, manifest: Manifest,
             path: Path) -> None:
    """Time every layer variant alone, in the file its runtime builds at ``precision``, then each whole model
    (``_time_wholes``); stop, keeping what was measured, at the time bound."""
    start = last = time.monotonic()
    work = job.folder / "latency-build"
    timing = Plan(warmup_s=0.0, duration_s=0.0, min_iterations=int(plan["iterations"]), cv_warn_percent=1e9)
    cpu = describe_cpu()
    layers = [ident for ident in todo if not ident.startswith(WHOLE)]
    for done, ident in enumerate(layers, 1):
        _check_bound(start, plan, path, table, profiles, done - 1, len(todo))
        form = plan["variants"][ident]
        options = _options(job, manifest, files, backend, form, precision, plan["batch"])
        engine = _load(backend, files[variant_file(form, backend.name, precision, options.get("int8_mode", "explicit"),
                                                   cpu)], work / "layer", options)
        try:
            table[ident] = _median(engine, plan["batch"], timing, WARMUP_RUNS)
        finally:
            engine.close()
        if done % SAVE_EVERY == 0:
            _save(path, table, profiles)
        if time.monotonic() - last > PROGRESS_EVERY_S or done == len(layers):
            last = time.monotonic()
            job.event("progress", "latency model: {}/{} variants measured ({:.0f} s)".format(
                done, len(todo), last - start), stage="latency", done=done, total=len(todo))
    wholes = [ident for ident in todo if ident.startswith(WHOLE)]
    if wholes:
        _check_bound(start, plan, path, table, profiles, len(layers), len(todo))
        table.update(_time_wholes(job, backend, files, plan, wholes, precision, manifest, work))
        job.event("progress", "latency model: {}/{} variants measured ({:.0f} s)".format(
            len(todo), len(todo), time.monotonic() - start), stage="latency", done=len(todo), total=len(todo))
    _save(path, table, profiles)


def _profile(job: Job, backend: Backend, files: Mapping[str, Path], plan: Mapping[str, Any], todo: list,
             table: Dict[str, float], profiles: Dict[str, Dict[str, float]], precision: str, manifest: Manifest,
             path: Path) -> None:
    """Whole models only (a few engines, not one per layer variant): each timed alone, then run again under the
    runtime's per-layer profiler (TensorRT's IProfiler, ONNX Runtime's trace, OpenVINO's counters:
    ``benchmark(profile_layers=True)``),
    whose layer names and times go back to the host as they are; the host maps them onto its layers and groups."""
    start = time.monotonic()
    work = job.folder / "latency-build"
    cpu = describe_cpu()
    try:
        for done, ident in enumerate(todo, 1):
            _check_bound(start, plan, path, table, profiles, done - 1, len(todo))
            form = plan["variants"][ident]
            at = baseline_precision(backend.name) if ident == BASELINE_VARIANT else precision
            options = _options(job, manifest, files, backend, form, at, plan["batch"])
            engine = _load(backend, files[variant_file(form, backend.name, at, options.get("int8_mode", "explicit"),
                                                       cpu)], work / "whole", options)
            try:
                result = engine.benchmark(plan["batch"], _whole_timing(plan), profile_layers=True)
                table[ident] = float(statistics.median(result["samples_ms"]))
                profiles[ident] = {str(name): float(ms) for name, ms in result.get("layers_ms", {}).items()}
            finally:
                engine.close()
            _save(path, table, profiles)
            job.event("progress", "latency model: {}/{} whole models profiled ({:.0f} s)".format(
                done, len(todo), time.monotonic() - start), stage="latency", done=done, total=len(todo))
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


def _check_bound(start: float, plan: Mapping[str, Any], path: Path, table: Dict[str, float],
                 profiles: Dict[str, Dict[str, float]], done: int, total: int) -> None:
    if time.monotonic() - start > plan["max_seconds"]:
        _save(path, table, profiles)
        raise JobError("the latency model needs more than its bound of {:.0f} s on this device ({} of {} "
                       "variants measured and kept: push again to go on, or raise prune.latency_budget_s)".format(
                           plan["max_seconds"], done, total))


def _time_wholes(job: Job, backend: Backend, files: Mapping[str, Path], plan: Mapping[str, Any], wholes: list,
                 precision: str, manifest: Manifest, work: Path) -> Dict[str, float]:
    """Each whole model loaded, timed and closed alone, as the agent serves one. Interleaved in one process, every
    ONNX Runtime session kept its thread pool spinning beside the one being timed: the same unpruned MobileNetV2
    read 1.61 ms in one round-robin, 1.38 ms in another and 1.34 ms alone."""
    cpu = describe_cpu()
    times = {}
    try:
        for ident in wholes:
            at = baseline_precision(backend.name) if ident == BASELINE_VARIANT else precision
            form = plan["variants"][ident]
            options = _options(job, manifest, files, backend, form, at, plan["batch"])
            engine = _load(backend, files[variant_file(form, backend.name, at, options.get("int8_mode", "explicit"),
                                                       cpu)], work / "whole", options)
            try:
                times[ident] = float(statistics.median(engine.benchmark(plan["batch"], _whole_timing(plan))[
                    "samples_ms"]))
            finally:
                engine.close()
        return times
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


def _whole_timing(plan: Mapping[str, Any]) -> Plan:
    """A whole model: warmed up, then timed for at least WHOLE_TIMED_S and twice the plan's iterations (a
    sub-millisecond model's median over 14 runs moves by a fifth between two measurements of the same file)."""
    return Plan(warmup_s=WHOLE_WARMUP_S, duration_s=WHOLE_TIMED_S, min_iterations=int(plan["iterations"]) * 2,
                cv_warn_percent=1e9)


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


def _save(path: Path, table: Dict[str, float], profiles: Dict[str, Dict[str, float]]) -> None:
    write_json_atomic(path, {"ms": table, "profiles": profiles, "saved": time.time()})
