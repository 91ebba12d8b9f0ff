"""Check and measure an engine: its outputs against the host's (``reference.npz``), then its speed per batch
size, beside the baselines (``baseline``: the unpruned model as the user would run it, and strict FP32) in
alternating rounds so the report's speed-ups hold on a device whose load and clocks drift."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .. import telemetry
from ..backends import Backend, Engine
from ..benchmark import Plan, interleaved, round_plan
from ..contract.benchmark import ROUNDS
from ..contract.manifest import Manifest
from ..contract.validate import FP32_REFERENCE, compare, reference_key
from ..errors import JobError
from .baseline import Baseline, strict_baseline, user_baseline
from .context import Job

PLAN_LIMITS = {"warmup_s": (0.0, 120.0), "duration_s": (0.0, 600.0), "min_iterations": (1, 1000000),
               "cv_warn_percent": (0.0, 1000.0)}
BASELINE_FIELDS = ("latency_ms", "images_per_s", "qps", "iterations", "samples_ms")
# Benchmark switches that are diagnostics, not timing: run once per batch size on the final engine, outside the
# timed rounds and the power window (in every round they ran 8 trtexec runs per batch and mixed into power).
DIAGNOSTIC_EXTRAS = ("profile_layers", "cross_check")


@dataclass
class Measured:
    """The benchmark of every batch size, the baselines' engine facts, the device's telemetry around it."""

    results: List[Dict[str, Any]]
    baseline: Optional[Dict[str, Any]]  # the user's baseline at the primary (smallest) batch size
    telemetry: Dict[str, Any]
    baseline_fp32: Optional[Dict[str, Any]] = None
    baselines: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # batch size → the user's baseline there


def validate(engine: Engine, reference: Path, manifest: Manifest, model_name: str = "",
             backend: str = "", precision: str = "") -> Dict[str, Any]:
    """The engine against the host's outputs of the same model file (older bundles: the FP32 outputs), with the
    tolerances of the precision it was built at (default: the manifest's)."""
    with np.load(str(reference), allow_pickle=False) as data:
        key = reference_key(model_name) if reference_key(model_name) in data.files else FP32_REFERENCE
        inputs, outputs, labels = data["inputs"], data[key], data["labels"]
    # The host names the runtime its reference outputs came from: the same file run by the same runtime is
    # held to the stricter rule (a difference then is the CPU, not the runtime).
    same_runtime = key != FP32_REFERENCE and backend == manifest.raw.get("host", {}).get("reference_runtime")
    expected = tuple(manifest.input_shape)
    if tuple(inputs.shape[1:]) != expected:
        raise JobError("reference inputs have shape {} but the manifest says {}".format(
            list(inputs.shape[1:]), list(expected)))
    step = max(manifest.batch_sizes)
    actual = np.concatenate([engine.run(inputs[i:i + step]) for i in range(0, len(inputs), step)])
    result = compare(outputs, actual, labels, precision or manifest.precision, manifest.validation, same_runtime)
    result["reference"] = model_name if key != FP32_REFERENCE else "model.onnx (FP32)"
    return result


def measure(job: Job, manifest: Manifest, files: Mapping[str, Path], backend: Backend, engine: Engine,
            serving: Optional[Mapping[int, Tuple[Backend, Engine]]] = None) -> Measured:
    """Benchmark the job's engine (per batch size, the engine of ``serving`` that serves it) beside the baselines
    (per batch size, the user's baseline there, and strict FP32 on the runtime serving that batch size) with
    telemetry around the window; closes every engine."""
    per_batch = {b: (serving or {}).get(b, (backend, engine)) for b in manifest.batch_sizes}
    runtimes = {each.name: each for each, _ in [(backend, engine)] + list(per_batch.values())}
    users: Dict[int, Baseline] = {}  # batch size → the user's baseline there
    strict: Dict[str, Baseline] = {}  # runtime → its strict FP32 baseline
    try:
        users = user_baseline(job, manifest, files)
        for name, each in runtimes.items():
            found = strict_baseline(job, manifest, files, each, users)
            if found is not None:
                strict[name] = found
        before = telemetry.snapshot()
        with telemetry.sampler() as sampler:
            results = benchmark_phase(job, manifest, backend, engine, users, sampler, per_batch, strict)
        after = telemetry.snapshot()
    finally:
        for each in {id(b): b for b in list(users.values()) + list(strict.values())}.values():
            each.engine.close()
        for each in {id(e): e for _, e in [(backend, engine)] + list(per_batch.values())}.values():
            each.close()
    primary = users.get(min(manifest.batch_sizes))
    fp32 = strict.get(backend.name) or primary
    return Measured(results, primary.info if primary else None,
                    {"before": before, "after": after, "during": sampler.result()},
                    fp32.info if fp32 is not None else None,
                    {str(b): _summary(each.info) for b, each in sorted(users.items())})


def _summary(info: Mapping[str, Any]) -> Dict[str, Any]:
    """What the report says of the baseline at one batch size (its race is in ``baseline``)."""
    return {k: info[k] for k in ("label", "backend", "precision", "executed_precision", "model_file",
                                 "model_size_bytes", "engine_key", "engine_reused") if k in info}


def benchmark_phase(job: Job, manifest: Manifest, backend: Backend, engine: Engine,
                    baselines: Mapping[int, Baseline], sampler: Any = None,
                    serving: Optional[Mapping[int, Tuple[Backend, Engine]]] = None,
                    strict: Optional[Mapping[str, Baseline]] = None) -> List[Dict[str, Any]]:
    """Per batch size: the final engine (the one of ``serving`` for that size, when given), and the baselines in
    alternating rounds with the same timing settings (``baselines``: the user's baseline at each batch size;
    ``strict``: the strict FP32 baseline of each runtime, the one of the runtime serving that size, unless it is
    that size's user baseline); the final engine's diagnostics (per-layer profile, trtexec) once afterwards;
    ``sampler``'s power window covers the final engine's timed rounds only."""
    plan = benchmark_plan(manifest.benchmark)
    window = getattr(sampler, "window", nullcontext)
    results = []
    for batch in manifest.batch_sizes:
        runtime, served = (serving or {}).get(batch, (backend, engine))
        extras = runtime.benchmark_options(manifest.benchmark)
        timing = {k: v for k, v in extras.items() if k not in DIAGNOSTIC_EXTRAS}
        diagnostics = {k: v for k, v in extras.items() if k in DIAGNOSTIC_EXTRAS and v}
        against = {"baseline": baselines[batch]} if batch in baselines else {}
        second = (strict or {}).get(runtime.name) if strict else None
        if second is not None and second is not against.get("baseline"):
            against["baseline_fp32"] = second
        rounds = int(manifest.benchmark.get("rounds", ROUNDS)) if against else 1
        runs = {"final": _windowed(served, batch, timing, window)}
        for name, each in against.items():
            runs[name] = lambda p, b=batch, e=each.engine, t=timing: e.benchmark(b, p, **t)
        if against:
            message = "benchmarking batch {} (final, {}; interleaved)".format(
                batch, ", ".join(each.info["label"] for each in against.values()))
        else:
            message = "benchmarking batch {}".format(batch)
        job.event("stage", message, stage="benchmark", batch=batch)
        result = _with_baseline(interleaved(runs, plan, rounds=rounds),
                                {name: each.info.get("label") for name, each in against.items()})
        if diagnostics:
            _add_diagnostics(result, served.benchmark(batch, round_plan(plan, rounds, False), **timing, **diagnostics))
        if "warning" in result:
            job.event("warning", result["warning"], batch=batch)
        results.append(result)
    return results


def _windowed(engine: Engine, batch: int, timing: Dict[str, Any], window: Any) -> Any:
    def run(plan: Plan) -> Dict[str, Any]:
        with window():
            return engine.benchmark(batch, plan, **timing)
    return run


def _add_diagnostics(result: Dict[str, Any], extra: Dict[str, Any]) -> None:
    """What only the diagnostics run reports (layer times, the trtexec comparison and its warning)."""
    for key, value in extra.items():
        if key not in result and key not in ("samples_ms", "series_ms"):
            result[key] = value
    flagged = (extra.get("trtexec") or {}).get("flagged") if isinstance(extra.get("trtexec"), dict) else None
    if flagged:
        note = "trtexec cross-check: " + "; ".join(flagged)
        result["warning"] = "; ".join(w for w in (result.get("warning"), note) if w)


def _with_baseline(measured: Dict[str, Dict[str, Any]], labels: Optional[Mapping[str, Any]] = None
                   ) -> Dict[str, Any]:
    """The final engine's figures, with each baseline's beside them and the speed-ups over them: ``speedup`` over
    the user's baseline, ``speedup_fp32`` over strict FP32 on the same runtime (the user's, when that is it)."""
    result = measured["final"]
    for name, ratio in (("baseline", "speedup"), ("baseline_fp32", "speedup_fp32")):
        if name in measured:
            base = measured[name]
            result[name] = {k: base[k] for k in BASELINE_FIELDS if k in base}
            if (labels or {}).get(name):
                result[name]["label"] = labels[name]
            result[ratio] = base["latency_ms"]["median"] / result["latency_ms"]["median"]
    if "baseline" in result and "speedup_fp32" not in result:  # the user's baseline here is strict FP32 already
        result["speedup_fp32"] = result["speedup"]
        if (labels or {}).get("baseline"):
            result["baseline_fp32"] = {"label": labels["baseline"], "same_as": "baseline"}
    return result


def benchmark_plan(settings: Mapping[str, Any]) -> Plan:
    """The manifest's benchmark settings, each a number within sane bounds (a job must end)."""
    for key, (low, high) in PLAN_LIMITS.items():
        value = settings.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise JobError("manifest target.benchmark.{} = {!r} must be a number from {} to {}; fix [benchmark] in "
                           "deploy.toml".format(key, value, low, high))
    return Plan.from_manifest(settings)
