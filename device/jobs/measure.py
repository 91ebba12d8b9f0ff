"""Check and measure an engine: its outputs against the host's (``reference.npz``), then its speed per batch
size, beside the unpruned FP32 baseline in alternating rounds so the report's speed-up compares like with like
on a device whose load and clocks drift."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .. import telemetry
from ..backends import Backend, Engine
from ..benchmark import Plan, interleaved
from ..contract.benchmark import BASELINE, ROUNDS, baseline_precision
from ..contract.manifest import MODEL_BASELINE, Manifest
from ..contract.validate import FP32_REFERENCE, compare, reference_key
from ..errors import JobError
from .context import Job
from .engines import build_engine, build_options, engine_key, job_build_options

PLAN_LIMITS = {"warmup_s": (0.0, 120.0), "duration_s": (0.0, 600.0), "min_iterations": (1, 1000000),
               "cv_warn_percent": (0.0, 1000.0)}
BASELINE_FIELDS = ("latency_ms", "images_per_s", "qps", "iterations", "samples_ms")
Baseline = Tuple[Engine, Dict[str, Any]]  # the loaded baseline engine, and what the report says of it


@dataclass
class Measured:
    """The benchmark of every batch size, the baseline's engine facts, the device's telemetry around it."""

    results: List[Dict[str, Any]]
    baseline: Optional[Dict[str, Any]]
    telemetry: Dict[str, Any]


def validate(engine: Engine, reference: Path, manifest: Manifest, model_name: str = "",
             backend: str = "") -> Dict[str, Any]:
    """The engine against the host's outputs of the same model file (older bundles: the FP32 outputs)."""
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
    result = compare(outputs, actual, labels, manifest.precision, manifest.validation, same_runtime)
    result["reference"] = model_name if key != FP32_REFERENCE else "model.onnx (FP32)"
    return result


def measure(job: Job, manifest: Manifest, files: Mapping[str, Path], backend: Backend, engine: Engine) -> Measured:
    """Benchmark the job's engine (and the baseline beside it) with telemetry around the window; closes both."""
    try:
        baseline = baseline_engine(job, manifest, files, backend)
        try:
            before = telemetry.snapshot()
            with telemetry.sampler() as sampler:
                results = benchmark_phase(job, manifest, backend, engine, baseline)
            after = telemetry.snapshot()
        finally:
            if baseline is not None:
                baseline[0].close()
    finally:
        engine.close()
    return Measured(results, baseline[1] if baseline is not None else None,
                    {"before": before, "after": after, "during": sampler.result()})


def baseline_engine(job: Job, manifest: Manifest, files: Mapping[str, Path], backend: Backend) -> Optional[Baseline]:
    """The unpruned FP32 model on the same backend, when the bundle carries it and the project wants it."""
    if MODEL_BASELINE not in files or not manifest.benchmark.get("baseline", BASELINE):
        return None
    precision = baseline_precision(manifest.precision, backend.name)
    options = build_options(precision, manifest.batch_sizes, manifest.build)
    entry = manifest.files[MODEL_BASELINE]
    key = engine_key({MODEL_BASELINE: entry.sha256}, backend.identity(), dict(options, model=MODEL_BASELINE))
    extra = job_build_options(job, options, manifest, files, backend, MODEL_BASELINE)
    folder, meta, reused = build_engine(job, backend, files[MODEL_BASELINE], key, extra, what="baseline ")
    return backend.load(folder, meta), {"engine_key": key, "engine_reused": reused, "model_file": MODEL_BASELINE,
                                        "model_size_bytes": entry.size, "precision": precision,
                                        "backend": backend.name}


def benchmark_phase(job: Job, manifest: Manifest, backend: Backend, engine: Engine,
                    baseline: Optional[Baseline]) -> List[Dict[str, Any]]:
    """Per batch size: the final engine, and the baseline in alternating rounds with the same settings."""
    plan = benchmark_plan(manifest.benchmark)
    extras = backend.benchmark_options(manifest.benchmark)
    results = []
    for batch in manifest.batch_sizes:
        runs = {"final": lambda p, b=batch: engine.benchmark(b, p, **extras)}
        if baseline is not None:
            runs["baseline"] = lambda p, b=batch: baseline[0].benchmark(b, p, **extras)
            message = "benchmarking batch {} (final and FP32 baseline, interleaved)".format(batch)
        else:
            message = "benchmarking batch {}".format(batch)
        job.event("stage", message, stage="benchmark", batch=batch)
        rounds = int(manifest.benchmark.get("rounds", ROUNDS)) if baseline else 1
        result = _with_baseline(interleaved(runs, plan, rounds=rounds))
        if "warning" in result:
            job.event("warning", result["warning"], batch=batch)
        results.append(result)
    return results


def _with_baseline(measured: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The final engine's figures, with the baseline's beside them and the speed-up when it ran."""
    result = measured["final"]
    if "baseline" in measured:
        base = measured["baseline"]
        result["baseline"] = {k: base[k] for k in BASELINE_FIELDS if k in base}
        result["speedup"] = base["latency_ms"]["median"] / result["latency_ms"]["median"]
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
