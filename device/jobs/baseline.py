"""The report's baselines: the unpruned model as its user would otherwise run it, and at strict FP32.

``user_baseline`` is what the headline speed-up is measured against (and what any other code that speaks of
"the baseline", e.g. a latency target, should use): ``model.baseline.onnx`` built on every runtime the device
has, each at its default precision, no calibration (``contract.runtimes.baseline_precision``: TensorRT FP16,
OpenVINO's default inference precision, bf16 on CPUs with AVX512-BF16/AMX, ONNX Runtime FP32), measured in
interleaved rounds and, at each batch size, the fastest there kept (the per-batch rule the final model's serving
map follows). What it ran is read back from the runtime, never assumed.
``strict_baseline`` is the like-for-like second figure: strict FP32 on the runtime serving the final model.
"""

from __future__ import annotations

import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ..backends import Backend, Engine, available
from ..contract.benchmark import BASELINE
from ..contract.manifest import MODEL_BASELINE, MODEL_BASELINE_FP16, MODEL_FP16, MODEL_FP32, Manifest
from ..contract.model_files import AUTO, candidates
from ..contract.runtimes import baseline_precision
from ..errors import storage_failure
from .auto import Candidate, crashed, crashed_runtime, fastest_per_batch, interleave, median_at, precision_label, trying
from .context import Job
from .engines import build_engine, build_options, engine_key, job_build_options

Files = Mapping[str, Path]


@dataclass
class Baseline:
    """A loaded baseline engine and what the report says of it (its ``label``: 'unpruned bf16 on openvino')."""

    engine: Engine
    info: Dict[str, Any]


def wanted(manifest: Manifest, files: Files) -> bool:
    """Whether this job measures baselines: the bundle carries the unpruned model and the project wants it."""
    return MODEL_BASELINE in files and bool(manifest.benchmark.get("baseline", BASELINE))


def baseline_backends() -> Dict[str, Backend]:
    """Every runtime a user could run the unpruned model on here: TensorRT where present, else the CPU ones."""
    found = available()
    return {name: found[name] for name in candidates(AUTO, found)}


def build_baseline(job: Job, manifest: Manifest, files: Files, backend: Backend, precision: str) -> Baseline:
    """``model.baseline.onnx`` on ``backend`` at ``precision``, built (or reused) and loaded.

    The backend sees the unpruned files under the names of the float model (and of its FP16-typed copy for
    TensorRT 11), so it picks the file for ``precision`` exactly as it does for the final model.
    """
    as_float = {MODEL_FP32: files[MODEL_BASELINE]}
    hashes = {MODEL_BASELINE: manifest.files[MODEL_BASELINE].sha256}
    if MODEL_BASELINE_FP16 in files:
        as_float[MODEL_FP16] = files[MODEL_BASELINE_FP16]
        hashes[MODEL_BASELINE_FP16] = manifest.files[MODEL_BASELINE_FP16].sha256
    options = build_options(precision, manifest.batch_sizes, manifest.build)
    key = engine_key(hashes, backend.identity(), dict(options, model=MODEL_BASELINE))
    extra = job_build_options(job, options, manifest, as_float, backend, MODEL_BASELINE)
    folder, meta, reused = build_engine(job, backend, files[MODEL_BASELINE], key, extra, what="baseline ")
    engine = backend.load(folder, meta)
    return Baseline(engine, {"engine_key": key, "engine_reused": reused, "model_file": MODEL_BASELINE,
                             "model_size_bytes": manifest.files[MODEL_BASELINE].size, "precision": precision,
                             "backend": backend.name})


def describe(baseline: Baseline, data: np.ndarray) -> Baseline:
    """The baseline's label from what its runtime says it runs (one run first: OpenVINO compiles on first use)."""
    baseline.engine.run(data)
    info = baseline.info
    info["executed_precision"] = baseline.engine.executed_precision() or ""
    shown = precision_label(info["precision"], info["executed_precision"])
    info["label"] = "unpruned {} on {}".format(shown.upper() if shown.startswith("fp") else shown, info["backend"])
    return baseline


def user_baseline(job: Job, manifest: Manifest, files: Files,
                  backends: Optional[Mapping[str, Backend]] = None) -> Dict[int, Baseline]:
    """The report's baseline at each batch size: the unpruned model at each runtime's default precision, the
    fastest at that batch size kept (``auto.fastest_per_batch``: the rule of the final model's serving map, without
    its engine-saving tie), so each batch size's speed-up is over the best a user could run there. Several batch
    sizes share one ``Baseline`` when one runtime is the fastest at each.

    Empty when the job measures no baseline or no runtime could build it (each failure is a warning).
    """
    if not wanted(manifest, files):
        return {}
    backends = baseline_backends() if backends is None else backends
    data = np.random.default_rng(0).standard_normal([min(manifest.batch_sizes)] + list(manifest.input_shape))
    built: Dict[str, Baseline] = {}
    crashes = crashed(job)
    for name, backend in backends.items():
        if crashed_runtime(crashes, name) is not None:
            job.event("warning", "baseline on {} skipped: it crashed the job's worker on this job".format(name))
            continue
        try:
            with trying(job, "baseline {}".format(name)):  # a crash here drops this runtime, not the job
                built[name] = describe(build_baseline(job, manifest, files, backend, baseline_precision(name)),
                                       data.astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - one runtime failing on the baseline must not stop the job
            job.log(traceback.format_exc())
            if storage_failure(exc):
                _close(built.values())
                raise
            job.event("warning", "baseline on {} dropped ({}: {})".format(name, type(exc).__name__, exc))
    if len(built) < 2:
        return {b: each for each in built.values() for b in manifest.batch_sizes}
    return _fastest(job, manifest, built)


def _fastest(job: Job, manifest: Manifest, built: Dict[str, Baseline]) -> Dict[int, Baseline]:
    """The baselines raced as ``auto`` races candidates (interleaved rounds, every batch size); at each batch size
    the fastest there kept, the others closed; why, in ``chosen_because`` of each kept one."""
    tried: List[Candidate] = [Candidate(name, MODEL_BASELINE, True) for name in built]
    sizes = sorted(set(manifest.batch_sizes))
    job.event("stage", "baseline: measuring {} (at each batch size the fastest is the report's baseline)".format(
        " vs ".join(b.info["label"] for b in built.values())), stage="baseline")
    for size in sizes:
        data = np.random.default_rng(0).standard_normal([size] + list(manifest.input_shape)).astype(np.float32)
        rounds = interleave({name: (lambda e=b.engine, d=data: e.run(d)) for name, b in built.items()})
        for candidate in tried:
            if size == sizes[-1]:
                candidate.round_medians_ms = rounds[candidate.backend]
            else:
                candidate.other_batches[size] = rounds[candidate.backend]
    fastest = fastest_per_batch(tried, sizes, sizes[-1])
    why = "the fastest for the unpruned model at each batch size: " + "; ".join(
        _why(size, sizes[-1], fastest[size], tried, built) for size in sizes)
    kept = {name: built.pop(name) for name in dict.fromkeys(fastest[size] for size in sizes)}
    _close(built.values())
    for each in kept.values():
        each.info["race"] = {c.backend: {"median_ms": c.median_ms, "other_batches": {
            str(b): statistics.median(m) for b, m in c.other_batches.items()}} for c in tried}
        each.info["chosen_because"] = why
    return {size: kept[fastest[size]] for size in sizes}


def _why(size: int, batch: int, winner: str, tried: List[Candidate], built: Mapping[str, Baseline]) -> str:
    """'batch 32: unpruned bf16 on openvino, 2.46× faster than unpruned FP32 on onnxruntime (4.1 vs 10.1 ms)'."""
    def median(candidate: Candidate) -> float:
        return median_at(candidate, size, batch)
    first = next(c for c in tried if c.backend == winner)
    second = min((c for c in tried if c is not first), key=median)
    label = {name: each.info["label"] for name, each in built.items()}
    return "batch {}: {}, {:.2f}× faster than {} ({:.3f} vs {:.3f} ms)".format(
        size, label[winner], median(second) / median(first), label[second.backend], median(first), median(second))


def strict_baseline(job: Job, manifest: Manifest, files: Files, backend: Backend,
                    users: Mapping[int, Baseline]) -> Optional[Baseline]:
    """Strict FP32 on ``backend`` (a runtime serving the final model): the second column. The user's baseline
    itself when one of its batch sizes already runs exactly that (ONNX Runtime); None when the job measures no
    baseline."""
    if not users or not wanted(manifest, files):
        return None
    for each in users.values():
        info = each.info
        if info["backend"] == backend.name and precision_label(info["precision"], info["executed_precision"]) == "fp32":
            return each
    try:
        strict = build_baseline(job, manifest, files, backend, "fp32")
    except Exception as exc:  # noqa: BLE001 - the second column is not worth failing the job
        job.log(traceback.format_exc())
        if storage_failure(exc):
            raise
        job.event("warning", "strict FP32 baseline on {} dropped ({}: {})".format(backend.name, type(exc).__name__,
                                                                                   exc))
        return None
    data = np.random.default_rng(0).standard_normal([min(manifest.batch_sizes)] + list(manifest.input_shape))
    strict = describe(strict, data.astype(np.float32))
    strict.info["label"] = "unpruned strict FP32 on {}".format(backend.name)
    return strict


def _close(baselines: Any) -> None:
    for each in baselines:
        each.engine.close()
