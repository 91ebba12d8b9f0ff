"""Step 2: the engine this job runs, built (or reused from the cache), loaded and validated.

Either the backend and precision the manifest names (or the contract's fallback for it, when deploy.toml
allows), or every (runtime, precision) candidate built and validated, the valid ones raced and the fastest
kept: for ``backend = "auto"`` the runtimes, for ``precision = "auto"`` the precisions, together.
"""

from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from ..backends import Backend, BackendUnavailable, Engine, available, get_backend
from ..contract.manifest import MODEL_BASELINE, REFERENCE, Manifest
from ..contract.model_files import AUTO, ModelChoiceError, candidates, job_candidates, model_file
from ..contract.runtimes import cpu_runtimes, fallback_runtime
from ..cpu import describe_cpu
from ..errors import JobError, StaleEngine, storage_failure
from .auto import (
    ROUNDS,
    Candidate,
    choose,
    crashed,
    crashed_runtime,
    interleave,
    precision_advice,
    primary_batch,
    serve,
    trying,
)
from .context import Job
from .engines import build_engine, build_options, engine_key, job_build_options
from .measure import validate

Files = Mapping[str, Path]


@dataclass
class Prepared:
    """A built, loaded and validated engine, and how it came to be chosen."""

    backend: Backend
    engine: Engine
    engine_dir: Path
    meta: Dict[str, Any]
    reused: bool
    key: str
    model_file: str
    validation: Dict[str, Any]
    fallback: Any = None
    auto: Optional[Dict[str, Any]] = None
    precision: str = ""
    executed: str = ""  # what the runtime says the engine runs (OpenVINO's bf16/f16/f32), when it says
    serving: Dict[int, Prepared] = field(default_factory=dict)  # batch → engine, when more than one serves

    def per_batch(self) -> Dict[int, Tuple[Backend, Engine]]:
        """The (runtime, engine) serving each batch size of a serving map; empty when this engine serves all."""
        return {b: (each.backend, each.engine) for b, each in self.serving.items()}


def prepare(job: Job, manifest: Manifest, files: Files) -> Prepared:
    """The engine this job runs, built (or reused) and validated: the (backend, precision) asked for, or the
    fastest valid candidate when either is ``auto`` or the bundle carries other precisions to measure."""
    cpu = describe_cpu()
    backends, fallback = job_backends(manifest)
    pairs = _pairs(manifest, list(backends), files, cpu)
    if manifest.backend != AUTO and len(pairs) == 1:
        chosen = prepare_one(job, manifest, files, backends[pairs[0][0]], _options(manifest, pairs[0][1]), cpu)
        validation = chosen.validation
        if not validation["passed"]:
            chosen.engine.close()
            raise JobError(_validation_failed(validation))
    else:
        chosen = prepare_race(job, manifest, files, backends, pairs, cpu)
    chosen.fallback = fallback
    return chosen


def job_backends(manifest: Manifest) -> Tuple[Dict[str, Backend], Optional[str]]:
    """The runtimes this job may run on, by name (``auto``: every candidate here), and a fallback's reason."""
    if manifest.backend != AUTO:
        backend, fallback = select_backend(manifest)
        return {backend.name: backend}, fallback
    found = available()
    names = candidates(AUTO, found)
    if not names:
        raise BackendUnavailable("backend auto: no runtime on this device (have neither {}); install one with "
                                 "`edgekit device setup`".format(" nor ".join(cpu_runtimes())))
    return {name: found[name] for name in names}, None


def _pairs(manifest: Manifest, names: List[str], files: Files, cpu: Dict[str, Any]) -> List[Tuple[str, str]]:
    try:
        return job_candidates(names, manifest.precision, files, manifest.build.get("int8_mode", "explicit"), cpu)
    except ModelChoiceError as exc:
        raise JobError(str(exc)) from None


def _options(manifest: Manifest, precision: str) -> Dict[str, Any]:
    return build_options(precision, manifest.batch_sizes, manifest.build)


def _validation_failed(validation: Dict[str, Any]) -> str:
    return "validation failed against the host's outputs of {}: {}; the active model was not changed. {}".format(
        validation["reference"], validation["reason"], validation_advice(validation))


def select_backend(manifest: Manifest) -> Tuple[Backend, Optional[str]]:
    """The backend the manifest names; when its runtime is missing here, the contract's fallback for it if
    deploy.toml allows, with the reason for the report."""
    try:
        return get_backend(manifest.backend), None
    except BackendUnavailable as exc:
        fallback = fallback_runtime(manifest.backend)
        if fallback is not None and manifest.build.get("allow_fallback"):
            reason = "{} unavailable ({}); fell back to {} as deploy.toml allows".format(manifest.backend, exc,
                                                                                         fallback)
            return get_backend(fallback), reason
        message = "backend {} is not available on this device: {}".format(manifest.backend, exc)
        raise BackendUnavailable(message) from None


def prepare_one(job: Job, manifest: Manifest, files: Files, backend: Backend, options: Dict[str, Any],
                cpu: Dict[str, Any]) -> Prepared:
    """Build or reuse ``backend``'s engine at ``options["precision"]`` from the file model_files picks for this
    CPU, and validate it against the host's outputs with that precision's tolerances."""
    precision = options["precision"]
    model_name = _model_file(manifest, precision, files, backend, cpu)
    hashes = {name: manifest.files[name].sha256 for name in manifest.files
              if name not in (REFERENCE, MODEL_BASELINE)}
    key = engine_key(hashes, backend.identity(), dict(options, model=model_name))
    extra = job_build_options(job, options, manifest, files, backend, model_name)
    engine_dir, meta, reused, engine = _build_and_load(job, backend, files[model_name], key, extra)
    model_name = built_from(meta, model_name, manifest.files)
    try:
        job.event("stage", "validating {} {} ({}) against the host's reference outputs".format(
            backend.name, precision, model_name), stage="validate", backend=backend.name)
        validation = validate(engine, files[REFERENCE], manifest, model_name, backend.name, precision)
    except BaseException:
        engine.close()
        raise
    return Prepared(backend, engine, engine_dir, meta, reused, key, model_name, validation, precision=precision,
                    executed=engine.executed_precision() or "")


def built_from(meta: Mapping[str, Any], chosen: str, shipped: Iterable[str]) -> str:
    """The bundle file the engine was really built from: a backend may pick another file than the jobs-level
    choice (TensorRT 11 builds the FP16-typed file); the report names it and validation uses its outputs."""
    name = meta.get("model_file")
    return name if isinstance(name, str) and name in shipped else chosen


def _model_file(manifest: Manifest, precision: str, files: Files, backend: Backend, cpu: Dict[str, Any]) -> str:
    """The bundle file ``backend`` builds from on this CPU; the job fails when the bundle lacks it."""
    try:
        model_name = model_file(backend.name, precision, manifest.build.get("int8_mode", "explicit"), cpu,
                                manifest.files)
    except ModelChoiceError as exc:
        raise JobError(str(exc)) from None
    if model_name not in files:
        raise JobError("{} on this CPU needs {}, which the bundle lacks; push again (the host chose files for "
                       "another device?)".format(backend.name, model_name))
    return model_name


def _build_and_load(job: Job, backend: Backend, model: Path, key: str,
                    options: Dict[str, Any]) -> Tuple[Path, Dict[str, Any], bool, Engine]:
    """Build (or reuse) and load; a cached engine this runtime can no longer load is rebuilt once."""
    engine_dir, meta, reused = build_engine(job, backend, model, key, options)
    try:
        return engine_dir, meta, reused, backend.load(engine_dir, meta)
    except StaleEngine as exc:
        job.event("warning", "{}; rebuilding it".format(exc))
        shutil.rmtree(str(engine_dir), ignore_errors=True)
    engine_dir, meta, reused = build_engine(job, backend, model, key, options)
    return engine_dir, meta, reused, backend.load(engine_dir, meta)


# -- the race ------------------------------------------------------------------------------------
def prepare_race(job: Job, manifest: Manifest, files: Files, backends: Mapping[str, Backend],
                 pairs: List[Tuple[str, str]], cpu: Dict[str, Any]) -> Prepared:
    """Build and validate every (runtime, precision) candidate, race the valid ones, keep the fastest that may
    win (with an explicit precision: that precision; the others only advise)."""
    job.event("stage", "auto: trying {}".format(", ".join("{} {}".format(*pair) for pair in pairs)), stage="auto",
              candidates=["{} {}".format(*pair) for pair in pairs])
    tried: List[Candidate] = []
    ready: Dict[str, Prepared] = {}
    crashes = crashed(job)
    for name, precision in pairs:
        candidate = Candidate(name, precision=precision, requested=manifest.precision in (AUTO, precision))
        tried.append(candidate)
        prepared = _try_candidate(job, manifest, files, backends[name], cpu, candidate, crashes, ready)
        if prepared is not None and not _duplicate(job, manifest, candidate, prepared, pairs):
            ready[candidate.name] = prepared
    batch = max(manifest.batch_sizes)
    if len(ready) > 1:
        _race(job, manifest, ready, tried, batch)
    return _keep_fastest(job, manifest, ready, tried, batch, cpu)


def _duplicate(job: Job, manifest: Manifest, candidate: Candidate, prepared: Prepared,
               pairs: List[Tuple[str, str]]) -> bool:
    """A reduced-precision candidate the runtime runs in FP32 anyway (OpenVINO on a CPU without bf16/f16) is the
    FP32 candidate twice: dropped (its engine closed), saying so, unless it is the precision asked for."""
    if candidate.precision == manifest.precision or candidate.precision == "fp32" \
            or candidate.shown != "{} fp32".format(candidate.backend) or (candidate.backend, "fp32") not in pairs:
        return False
    prepared.engine.close()
    candidate.passed = False
    candidate.reason = "{} runs it in f32 on this device (no reduced precision here): the fp32 candidate".format(
        candidate.backend)
    job.event("progress", "auto: {} dropped ({})".format(candidate.name, candidate.reason), backend=candidate.backend)
    return True


def _try_candidate(job: Job, manifest: Manifest, files: Files, backend: Backend, cpu: Dict[str, Any],
                   candidate: Candidate, crashed: Mapping[str, str], ready: Dict[str, Prepared]) -> Optional[Prepared]:
    """One candidate built and validated, or dropped with the reason in ``candidate``: one failing (or having
    crashed the worker before) must not stop the others; a failing disk fails the job."""
    name = candidate.name
    signal = crashed_runtime(crashed, candidate.backend)
    if signal is not None:  # a runtime that crashed on this model (converting it, mostly) is not tried again
        candidate.reason = "crashed the job's worker ({}) on this model".format(signal)
        return None
    try:
        with trying(job, name):
            prepared = prepare_one(job, manifest, files, backend, _options(manifest, candidate.precision), cpu)
    except Exception as exc:  # noqa: BLE001 - one candidate failing must not stop the others
        job.log(traceback.format_exc())
        if storage_failure(exc):  # the disk, not the runtime: the job fails with the storage's reason
            _close(ready.values())
            raise
        candidate.reason = str(exc) if isinstance(exc, JobError) else "{}: {}".format(type(exc).__name__, exc)
        job.event("warning", "auto: {} dropped ({})".format(name, candidate.reason), backend=candidate.backend)
        return None
    validation = prepared.validation
    candidate.model_file, candidate.passed = prepared.model_file, bool(validation["passed"])
    candidate.executed = prepared.executed
    candidate.reason = "" if candidate.passed else "validation failed: {}".format(validation["reason"])
    candidate.extra = {"engine_key": prepared.key, "engine_reused": prepared.reused,
                       "top1_agreement": validation.get("top1_agreement"), "cosine_min": validation.get("cosine_min")}
    if candidate.passed:
        return prepared
    prepared.engine.close()
    job.event("warning", "auto: {} dropped ({})".format(candidate.shown, candidate.reason), backend=candidate.backend)
    if candidate.requested and manifest.backend != AUTO and manifest.precision != AUTO:
        _close(ready.values())  # the precision asked for failed on the runtime asked for: as without a race
        raise JobError(_validation_failed(validation))
    return None


def _race(job: Job, manifest: Manifest, ready: Mapping[str, Prepared], tried: List[Candidate], batch: int) -> None:
    """Every valid candidate measured in interleaved rounds at every batch size, into ``tried``."""
    sizes = sorted(set(manifest.batch_sizes))
    shown = {c.name: c.shown for c in tried}
    job.event("stage", "auto: measuring {} at batch {} ({} interleaved rounds each)".format(
        " vs ".join(shown[name] for name in ready), ", ".join(str(b) for b in sizes), ROUNDS), stage="auto",
        batch=batch)
    for size in sizes:
        data = np.random.default_rng(0).standard_normal([size] + list(manifest.input_shape)).astype(np.float32)
        rounds = interleave({name: _runner(prepared.engine, data) for name, prepared in ready.items()})
        for candidate in tried:
            if size == batch:
                candidate.round_medians_ms = rounds.get(candidate.name, [])
            elif candidate.name in rounds:
                candidate.other_batches[size] = rounds[candidate.name]


def _keep_fastest(job: Job, manifest: Manifest, ready: Dict[str, Prepared], tried: List[Candidate], batch: int,
                  cpu: Dict[str, Any]) -> Prepared:
    """The engine(s) kept, the others closed, the figures behind the choice kept for the report. With
    ``precision = "auto"``, ``serve``'s per-batch-size choice (a serving map when no engine is as fast at every
    batch size); with an explicit precision, ``choose``'s single engine and a warning when another precision
    measured faster."""
    primary = primary_batch(manifest)
    try:
        serving = serve(tried, manifest.batch_sizes, batch) if manifest.precision == AUTO else None
        choice = choose(tried, batch, primary) if serving is None else None
    except ValueError as exc:
        _close(ready.values())
        raise JobError("{}; the active model was not changed".format(exc)) from None
    names = serving.files if serving is not None else [choice.winner]
    kept = {name: ready.pop(name) for name in names}
    _close(ready.values())
    winner = kept[names[0]]
    message = serving.message if serving is not None else choice.message
    speedup = serving.speedup if serving is not None else choice.speedup
    job.event("auto", message, stage="auto", chosen=winner.backend.name, precision=winner.precision,
              speedup=speedup)
    advice = None if serving is not None else precision_advice(tried, choice.winner, batch, primary)
    if advice:
        job.event("warning", advice, stage="auto")
    winner.auto = {"chosen": winner.backend.name, "precision": winner.precision, "candidate": names[0],
                   "runner_up": serving.runner_up if serving is not None else choice.runner_up, "speedup": speedup,
                   "batch": batch, "message": message,
                   "primary_batch": primary if serving is not None else choice.primary,
                   "crossed": {} if serving is not None else {str(b): name for b, name in choice.crossed.items()},
                   "cpu": cpu, "runtime_auto": manifest.backend == AUTO, "precision_auto": manifest.precision == AUTO,
                   "precision_advice": advice, "candidates": [candidate.summary() for candidate in tried]}
    if serving is not None:
        winner.auto["serving"] = {str(b): dict(served_entry(kept[name], manifest), reason=serving.reasons[b])
                                  for b, name in sorted(serving.served.items())}
        if len(names) > 1:
            winner.serving = {b: kept[name] for b, name in serving.served.items()}
    return winner


def served_entry(prepared: Prepared, manifest: Manifest) -> Dict[str, Any]:
    """What the report (and the serving map) says of the engine serving a batch size: its file (and size) and its
    own validation, so the report's size and validation columns describe what serves each batch size."""
    validation = prepared.validation
    return {"backend": prepared.backend.name, "precision": prepared.precision, "executed_precision": prepared.executed,
            "model_file": prepared.model_file, "model_size_bytes": manifest.files[prepared.model_file].size,
            "engine_key": prepared.key, "top1_agreement": validation.get("top1_agreement"),
            "validation": {k: validation[k] for k in ("passed", "top1_agreement", "cosine_min", "reference")
                           if k in validation}}


def validation_advice(validation: Dict[str, Any]) -> str:
    """The next step after a failed validation."""
    if validation.get("same_runtime"):
        return ("The device runs the same file in the same runtime yet computes differently (a different CPU "
                "instruction set can saturate INT8 kernels): use precision = \"fp32\" on this device, or report it")
    return ("The device's runtime departs from the host's results: keep more layers in floating point "
            "(lower quantize.max_accuracy_drop), use precision = \"fp16\" (TensorRT) or \"fp32\"")


def _close(prepared: Iterable[Prepared]) -> None:
    for each in prepared:
        each.engine.close()


def _runner(engine: Engine, data: np.ndarray) -> Callable[[], Any]:
    return lambda: engine.run(data)
