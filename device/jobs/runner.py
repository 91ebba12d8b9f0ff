"""Run one job: verify the bundle, build (or reuse) the engine, validate, benchmark, switch, report.

A job is safe to run again from the start: the engine is built into a private directory and renamed
into the cache, and ``current`` is switched only after validation passes. That is what makes the
agent restart-safe: an interrupted job is simply run again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__, telemetry
from ..agent.spool import TERMINAL_STATES, Spool, read_json, write_atomic, write_json_atomic
from ..agent.store import touch
from ..backends import Backend, BackendUnavailable, Engine, available, get_backend
from ..backends.tensorrt.jetson import TegrastatsSampler
from ..benchmark import Plan, interleaved
from ..contract.budget import accuracy_failures, budget_of, latency_failures
from ..contract.manifest import (
    CALIBRATION_CACHE,
    MANIFEST,
    MODEL_BASELINE,
    REFERENCE,
    SIGNATURE,
    Manifest,
    ManifestError,
    load_manifest_bytes,
    sha256_file,
)
from ..contract.model_files import AUTO, CPU_RUNTIMES, ModelChoiceError, candidates, model_file
from ..contract.signing import SignatureError, load_trusted_keys, verify
from ..contract.validate import FP32_REFERENCE, compare, reference_key
from ..cpu import describe_cpu
from ..errors import JobError, StaleEngine, device_error, storage_failure
from .auto import ROUNDS, Candidate, choose, interleave
from .engines import ENGINE_META, build_options, engine_key

MAX_RESUMES = 10  # restarts of the agent itself, never caused by the job (the worker absorbs those)
# ``auto``: the runtime being tried (a crash of the worker then names it) and the ones that crashed it.
AUTO_TRYING = "auto.trying"
AUTO_CRASHED = "auto.crashed.json"
MAX_CRASHED_CANDIDATES = 3
Log = Callable[[str], None]


class JobRunner:
    """Runs jobs of one spool; ``log`` goes to the agent's own log (journald under systemd)."""

    def __init__(self, spool: Spool, log: Log = lambda message: None) -> None:
        self.spool = spool
        self.log = log

    def run(self, job: str) -> Dict[str, Any]:
        """Run one claimed job to ``done`` or ``failed``; never runs a job that is already terminal.

        Storage errors (full, read-only, failing) become the job's one-line reason; an error while
        recording the failure itself propagates to the agent, which retries it after freeing space.
        """
        if self.spool.is_terminal(job):
            return self.finish_from_report(job)
        state = self.spool.state(job) or {}
        attempt = int(state.get("attempt", 0)) + 1
        try:
            self.spool.set_state(job, "running", attempt=attempt, started=state.get("started", time.time()))
            if attempt > 1:
                self.event(job, "resume", "the agent restarted during this job; running it again (attempt {})".format(
                    attempt))
            if attempt > MAX_RESUMES:
                raise JobError("the agent was stopped {} times while this job ran (restarts or kills from outside "
                               "the job); giving up: check the device (`journalctl -u edgekit-agent`) and push "
                               "again".format(MAX_RESUMES))
            report = self._run(job)
        except (JobError, ManifestError, SignatureError, BackendUnavailable) as exc:
            return self.fail(job, str(exc), getattr(exc, "details", None))
        except OSError as exc:
            self.log(traceback.format_exc())
            return self.fail(job, device_error(exc, "running the job"))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a field of an unexpected shape
            self.log(traceback.format_exc())
            return self.fail(job, "the agent could not use the bundle ({}: {}); the host runs edgekit {}, this agent "
                                  "{}: update the agent (`edgekit device setup`) or the host; the active model was "
                                  "not changed".format(type(exc).__name__, exc, _host_version(self.spool, job),
                                                       __version__))
        except Exception as exc:  # noqa: BLE001 - an agent must survive any bad job
            self.log(traceback.format_exc())
            return self.fail(job, "internal error in the agent ({}: {}); the active model was not changed; the "
                                  "agent's log has the details".format(type(exc).__name__, exc))
        self.spool.write_report(job, report)
        self.spool.set_state(job, "done", attempt=attempt)
        self.event(job, "done", "job finished")
        return report

    def finish_from_report(self, job: str) -> Dict[str, Any]:
        """A job whose report was written but not its final state (the agent was killed in between)."""
        state = self.spool.state(job) or {}
        report = self.spool.report(job) or {"job": job, "status": state.get("status", "failed")}
        if state.get("status") not in TERMINAL_STATES:
            status = report.get("status") if report.get("status") in TERMINAL_STATES else "failed"
            extra = {"error": report.get("error", "job failed")} if status == "failed" else {}
            self.spool.set_state(job, status, attempt=state.get("attempt", 1), **extra)
            self.event(job, "done" if status == "done" else "failed", "job finished" if status == "done"
                       else report.get("error") or "job failed")
        return report

    def event(self, job: str, kind: str, message: str, **data: Any) -> None:
        self.spool.append_event(job, kind, message, **data)
        self.log("[{}] {}".format(job, message))

    def fail(self, job: str, message: str, details: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Record a failure: the state first (what makes the job terminal), then the report, then the event.

        Raises OSError only when not even the state can be written; the agent then frees space and retries.
        """
        report = {"job": job, "status": "failed", "error": message, "agent_version": __version__,
                  "current": None}
        report.update(details or {})
        manifest = _try_manifest(self.spool.job_dir(job))
        if manifest is not None:
            report["model"] = manifest.model
            report["current"] = self.spool.current(manifest.model)
        self.spool.set_state(job, "failed", error=message)
        try:
            self.spool.write_report(job, report)
            self.event(job, "failed", message)
        except OSError as exc:  # the state says failed; the host reads the reason from it
            self.log("[{}] failed ({}), but the report could not be written: {}".format(job, message, exc))
        return report

    # -- the steps --------------------------------------------------------------------------
    def _run(self, job: str) -> Dict[str, Any]:
        folder = self.spool.job_dir(job)
        self.event(job, "stage", "verifying bundle", stage="verify")
        manifest, signer = self.verify(folder)
        budget = budget_of(manifest.raw)
        missed = accuracy_failures(budget, manifest.raw.get("host", {}).get("accuracy", {}) or {})
        if missed:
            raise JobError("over budget: {}; nothing was built and the active model was not changed".format(
                "; ".join(missed)), {"budget_failures": missed, "model": manifest.model})
        files = self.resolve_files(manifest)
        chosen = self.prepare(job, manifest, files)
        backend, engine, engine_dir, key = chosen.backend, chosen.engine, chosen.engine_dir, chosen.key
        meta, reused, fallback, model_name = chosen.meta, chosen.reused, chosen.fallback, chosen.model_file
        try:
            validation = chosen.validation
            baseline = self.baseline_engine(job, manifest, files, backend)
            try:
                before = telemetry.snapshot()
                with TegrastatsSampler() as sampler:
                    results = self.benchmark_phase(job, manifest, backend, engine, baseline)
                after = telemetry.snapshot()
            finally:
                if baseline is not None:
                    baseline[0].close()
        finally:
            engine.close()
        missed = latency_failures(budget, results)
        if missed:
            raise JobError("over budget: {}; the active model was not changed".format("; ".join(missed)),
                           {"budget_failures": missed, "benchmarks": results, "validation": validation,
                            "backend": backend.name, "precision": manifest.precision, "engine_key": key})
        previous = self.spool.switch(manifest.model, engine_dir)
        self.event(job, "stage", "switched {} to engine {}".format(manifest.model, key[:12]), stage="switch")
        return {
            "job": job, "status": "done", "model": manifest.model, "agent_version": __version__,
            "signer": signer, "backend": backend.name, "backend_describe": backend.describe(),
            "fallback": fallback, "precision": manifest.precision, "engine_key": key, "engine_reused": reused,
            "engine": meta, "model_file": model_name, "model_size_bytes": manifest.files[model_name].size,
            "validation": validation, "benchmarks": results, "auto": chosen.auto,
            "baseline": baseline[1] if baseline is not None else None,
            "telemetry": {"device": telemetry.describe_host(), "before": before, "after": after,
                          "during": sampler.result()},
            "current": os.readlink(str(self.spool.models / manifest.model / "current")),
            "previous": previous, "host": manifest.raw.get("host", {}),
        }

    def baseline_engine(self, job: str, manifest: Manifest, files: Dict[str, Path],
                        backend: Backend) -> Optional[Tuple[Any, Dict[str, Any]]]:
        """The unpruned FP32 model on the same backend, when the bundle carries it and the project wants it."""
        if MODEL_BASELINE not in files or not manifest.benchmark.get("baseline", True):
            return None
        options = build_options("fp32", manifest.batch_sizes, manifest.build)
        entry = manifest.files[MODEL_BASELINE]
        key = engine_key({MODEL_BASELINE: entry.sha256}, backend.identity(), dict(options, model=MODEL_BASELINE))
        extra = self.backend_options(options, manifest, files, backend, MODEL_BASELINE)
        folder, meta, reused = self.build(job, backend, files[MODEL_BASELINE], key, extra, what="baseline ")
        return backend.load(folder, meta), {"engine_key": key, "engine_reused": reused, "model_file": MODEL_BASELINE,
                                            "model_size_bytes": entry.size, "precision": "fp32",
                                            "backend": backend.name}

    def benchmark_phase(self, job: str, manifest: Manifest, backend: Backend, engine: Any,
                        baseline: Optional[Tuple[Any, Dict[str, Any]]]) -> List[Dict[str, Any]]:
        """Per batch size: the final engine, and the baseline in alternating rounds with the same settings."""
        plan = benchmark_plan(manifest.benchmark)
        extras = {k: bool(manifest.benchmark[k]) for k in ("cuda_graph", "profile_layers", "cross_check")
                  if k in manifest.benchmark and backend.name == "tensorrt"}
        results = []
        for batch in manifest.batch_sizes:
            runs = {"final": lambda p, b=batch: engine.benchmark(b, p, **extras)}
            if baseline is not None:
                runs["baseline"] = lambda p, b=batch: baseline[0].benchmark(b, p, **extras)
                message = "benchmarking batch {} (final and FP32 baseline, interleaved)".format(batch)
            else:
                message = "benchmarking batch {}".format(batch)
            self.event(job, "stage", message, stage="benchmark", batch=batch)
            measured = interleaved(runs, plan, rounds=int(manifest.benchmark.get("rounds", 4)) if baseline else 1)
            result = measured["final"]
            if baseline is not None:
                base = measured["baseline"]
                result["baseline"] = {k: base[k] for k in ("latency_ms", "images_per_s", "qps", "iterations",
                                                           "samples_ms") if k in base}
                result["speedup"] = base["latency_ms"]["median"] / result["latency_ms"]["median"]
            if "warning" in result:
                self.event(job, "warning", result["warning"], batch=batch)
            results.append(result)
        return results

    def backend_options(self, options: Dict[str, Any], manifest: Manifest, files: Dict[str, Path],
                        backend: Backend, model_name: str) -> Dict[str, Any]:
        """What the build needs besides the cache-key options: input, caches, the node table for errors."""
        extra = dict(options, input_name=manifest.input_name, input_shape=manifest.input_shape,
                     graph=manifest.raw.get("host", {}).get("graphs", {}).get(model_name))
        if backend.name == "openvino":
            extra["openvino_cache_dir"] = str(self.spool.root / "cache" / "openvino")
        if backend.name == "tensorrt":
            version = backend.identity().get("version", "unknown")
            extra["timing_cache_path"] = str(self.spool.engines / "timing-tensorrt-{}.cache".format(version))
            extra["model_paths"] = {name: str(path) for name, path in files.items() if name.endswith(".onnx")}
            if CALIBRATION_CACHE in files:
                extra["calibration_cache"] = str(files[CALIBRATION_CACHE])
        return extra

    def verify(self, folder: Path) -> Tuple[Manifest, str]:
        """Signature first, then the manifest's own checks; nothing else in the bundle is trusted before."""
        payload = _read(folder / MANIFEST, "manifest.json")
        signature = _read(folder / SIGNATURE, "manifest.sig (the bundle is unsigned)")
        signer = verify(payload, signature, load_trusted_keys(self.spool.trusted_keys))
        return load_manifest_bytes(payload), signer

    def resolve_files(self, manifest: Manifest) -> Dict[str, Path]:
        """Each file from the content store, its size and hash checked now (a corrupt blob is dropped)."""
        paths = {}
        for entry in manifest.files.values():
            path = self.spool.blob(entry.sha256)
            if path.is_symlink():
                path.unlink()
                raise JobError("{} is a symlink in the device's store, which is refused; it was removed, push "
                               "again".format(entry.name))
            if not path.is_file():
                raise JobError("{} is missing from the device's store; push again".format(entry.name))
            if sha256_file(path) != entry.sha256:
                path.unlink()
                raise JobError("{} is corrupted on the device (hash mismatch); it was removed, push again".format(
                    entry.name))
            size = path.stat().st_size
            if size != entry.size:  # the content is right, the manifest is not: keep the good blob
                raise JobError("the manifest says {} has {} bytes but its content (sha256 {}) has {}; the bundle is "
                               "inconsistent, push again".format(entry.name, entry.size, entry.sha256[:12], size))
            touch(path)
            paths[entry.name] = path
        return paths

    def prepare(self, job: str, manifest: Manifest, files: Dict[str, Path]) -> Prepared:
        """The engine this job runs, built (or reused) and validated: the backend asked for, or auto's pick."""
        options = build_options(manifest.precision, manifest.batch_sizes, manifest.build)
        cpu = describe_cpu()
        if manifest.backend == AUTO:
            return self.prepare_auto(job, manifest, files, options, cpu)
        backend, fallback = self.select_backend(manifest)
        chosen = self.prepare_one(job, manifest, files, backend, options, cpu)
        validation = chosen.validation
        if not validation["passed"]:
            chosen.engine.close()
            raise JobError("validation failed against the host's outputs of {}: {}; the active model was not "
                           "changed. {}".format(validation["reference"], validation["reason"],
                                                validation_advice(validation)))
        chosen.fallback = fallback
        return chosen

    def prepare_one(self, job: str, manifest: Manifest, files: Dict[str, Path], backend: Backend,
                    options: Dict[str, Any], cpu: Dict[str, Any]) -> Prepared:
        """Build or reuse ``backend``'s engine from the file model_files picks for this CPU, and validate it."""
        try:
            model_name = model_file(backend.name, manifest.precision, manifest.build.get("int8_mode", "explicit"), cpu,
                                    manifest.files)
        except ModelChoiceError as exc:
            raise JobError(str(exc)) from None
        if model_name not in files:
            raise JobError("{} on this CPU needs {}, which the bundle lacks; push again (the host chose files for "
                           "another device?)".format(backend.name, model_name))
        hashes = {name: manifest.files[name].sha256 for name in manifest.files
                  if name not in (REFERENCE, MODEL_BASELINE)}
        key = engine_key(hashes, backend.identity(), dict(options, model=model_name))
        build_options_ = self.backend_options(options, manifest, files, backend, model_name)
        engine_dir, meta, reused = self.build(job, backend, files[model_name], key, build_options_)
        try:
            engine = backend.load(engine_dir, meta)
        except StaleEngine as exc:  # a cached engine this runtime cannot load: rebuild it once
            self.event(job, "warning", "{}; rebuilding it".format(exc))
            shutil.rmtree(str(engine_dir), ignore_errors=True)
            engine_dir, meta, reused = self.build(job, backend, files[model_name], key, build_options_)
            engine = backend.load(engine_dir, meta)
        try:
            self.event(job, "stage", "validating {} ({}) against the host's reference outputs".format(
                backend.name, model_name), stage="validate", backend=backend.name)
            validation = self.validate(engine, files[REFERENCE], manifest, model_name, backend.name)
        except BaseException:
            engine.close()
            raise
        return Prepared(backend, engine, engine_dir, meta, reused, key, model_name, validation)

    def prepare_auto(self, job: str, manifest: Manifest, files: Dict[str, Path], options: Dict[str, Any],
                     cpu: Dict[str, Any]) -> Prepared:
        """Build and validate every candidate runtime, race the valid ones, keep the fastest."""
        found = available()
        names = candidates(AUTO, found)
        if not names:
            raise BackendUnavailable("backend auto: no runtime on this device (have neither {}); install one with "
                                     "`edgekit device setup`".format(" nor ".join(CPU_RUNTIMES)))
        self.event(job, "stage", "auto: trying {}".format(", ".join(names)), stage="auto", candidates=names)
        tried: List[Candidate] = []
        ready: Dict[str, Prepared] = {}
        crashed = read_json(self.spool.job_dir(job) / AUTO_CRASHED) or {}  # written by the agent (supervise)
        trying = self.spool.job_dir(job) / AUTO_TRYING
        for name in names:
            candidate = Candidate(name)
            tried.append(candidate)
            if name in crashed:
                candidate.reason = "crashed the job's worker ({}) on this model".format(crashed[name])
                continue
            try:
                write_atomic(trying, name.encode("utf-8"))
                prepared = self.prepare_one(job, manifest, files, found[name], options, cpu)
            except Exception as exc:  # noqa: BLE001 - one runtime failing must not stop the others
                self.log(traceback.format_exc())
                _remove(trying)
                if storage_failure(exc):  # the disk, not the runtime: the job fails with the storage's reason
                    for other in ready.values():
                        other.engine.close()
                    raise
                candidate.reason = str(exc) if isinstance(exc, JobError) else "{}: {}".format(type(exc).__name__, exc)
                self.event(job, "warning", "auto: {} dropped ({})".format(name, candidate.reason), backend=name)
                continue
            _remove(trying)
            validation = prepared.validation
            candidate.model_file, candidate.passed = prepared.model_file, bool(validation["passed"])
            candidate.reason = "" if candidate.passed else "validation failed: {}".format(validation["reason"])
            candidate.extra = {"engine_key": prepared.key, "engine_reused": prepared.reused,
                               "top1_agreement": validation.get("top1_agreement"),
                               "cosine_min": validation.get("cosine_min")}
            if candidate.passed:
                ready[name] = prepared
            else:
                prepared.engine.close()
                self.event(job, "warning", "auto: {} dropped ({})".format(name, candidate.reason), backend=name)
        batch = max(manifest.batch_sizes)
        if len(ready) > 1:
            sizes = sorted(set(manifest.batch_sizes))
            self.event(job, "stage", "auto: measuring {} at batch {} ({} interleaved rounds each)".format(
                " vs ".join(ready), ", ".join(str(b) for b in sizes), ROUNDS), stage="auto", batch=batch)
            for size in sizes:
                data = np.random.default_rng(0).standard_normal([size] + list(manifest.input_shape)).astype(np.float32)
                rounds = interleave({name: _runner(prepared.engine, data) for name, prepared in ready.items()})
                for candidate in tried:
                    if size == batch:
                        candidate.round_medians_ms = rounds.get(candidate.backend, [])
                    elif candidate.backend in rounds:
                        candidate.other_batches[size] = rounds[candidate.backend]
        try:
            choice = choose(tried, batch)
        except ValueError as exc:
            for prepared in ready.values():
                prepared.engine.close()
            raise JobError("{}; the active model was not changed".format(exc)) from None
        for name, prepared in ready.items():
            if name != choice.winner:
                prepared.engine.close()
        self.event(job, "auto", choice.message, stage="auto", chosen=choice.winner, speedup=choice.speedup)
        winner = ready[choice.winner]
        winner.auto = {"chosen": choice.winner, "runner_up": choice.runner_up, "speedup": choice.speedup,
                       "batch": batch, "message": choice.message, "cpu": cpu,
                       "candidates": [candidate.summary() for candidate in tried]}
        return winner

    def select_backend(self, manifest: Manifest) -> Tuple[Backend, Any]:
        try:
            return get_backend(manifest.backend), None
        except BackendUnavailable as exc:
            if manifest.backend != "onnxruntime" and manifest.build.get("allow_fallback"):
                reason = "{} unavailable ({}); fell back to onnxruntime as deploy.toml allows".format(
                    manifest.backend, exc)
                return get_backend("onnxruntime"), reason
            message = "backend {} is not available on this device: {}".format(manifest.backend, exc)
            raise BackendUnavailable(message) from None

    def build(self, job: str, backend: Backend, model: Path, key: str,
              options: Dict[str, Any], what: str = "") -> Tuple[Path, Dict[str, Any], bool]:
        """Reuse a cached engine or build a new one privately and rename it into the cache."""
        final = self.spool.engines / key
        try:
            meta = read_json(final / ENGINE_META)
        except ValueError:  # a damaged engine.json: build again
            meta = None
            shutil.rmtree(str(final), ignore_errors=True)
        if meta is not None:
            touch(final)
            self.event(job, "cache", "reusing cached {}engine {} (no build needed)".format(what, key[:12]),
                       stage="build", reused=True)
            return final, meta, True
        self.event(job, "stage", "building {} {}engine".format(backend.name, what), stage="build", reused=False)
        work = self.spool.engines / ".build-{}-{}".format(key[:16], os.getpid())
        shutil.rmtree(str(work), ignore_errors=True)
        work.mkdir()
        try:
            meta = backend.build(model, work, options, lambda message: self.event(job, "progress", message))
            meta.update({"key": key, "backend": backend.name, "identity": backend.identity(), "options": options,
                         "built_at": time.time(), "job": job})
            write_json_atomic(work / ENGINE_META, meta)
        except BaseException:
            shutil.rmtree(str(work), ignore_errors=True)  # a half-built engine is never kept (nor its space)
            raise
        if final.exists():  # another run finished the same build first; keep that one
            shutil.rmtree(str(work))
        else:
            os.rename(str(work), str(final))
        self.event(job, "progress", "engine built in {:.1f}s".format(meta.get("build_s", 0.0)))
        return final, meta, False

    def validate(self, engine: Any, reference: Path, manifest: Manifest, model_name: str = "",
                 backend: str = "") -> Dict[str, Any]:
        """The engine against the host's outputs of the same model file (older bundles: the FP32 outputs)."""
        with np.load(str(reference), allow_pickle=False) as data:
            key = reference_key(model_name) if reference_key(model_name) in data.files else FP32_REFERENCE
            inputs, outputs, labels = data["inputs"], data[key], data["labels"]
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


def validation_advice(validation: Dict[str, Any]) -> str:
    """The next step after a failed validation."""
    if validation.get("same_runtime"):
        return ("The device runs the same file in the same runtime yet computes differently (a different CPU "
                "instruction set can saturate INT8 kernels): use precision = \"fp32\" on this device, or report it")
    return ("The device's runtime departs from the host's results: keep more layers in floating point "
            "(lower quantize.max_accuracy_drop), use precision = \"fp16\" (TensorRT) or \"fp32\"")


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


def _runner(engine: Engine, data: np.ndarray) -> Callable[[], Any]:
    return lambda: engine.run(data)


PLAN_LIMITS = {"warmup_s": (0.0, 120.0), "duration_s": (0.0, 600.0), "min_iterations": (1, 1000000),
               "cv_warn_percent": (0.0, 1000.0)}


def benchmark_plan(settings: Dict[str, Any]) -> Plan:
    """The manifest's benchmark settings, each a number within sane bounds (a job must end)."""
    for key, (low, high) in PLAN_LIMITS.items():
        value = settings.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise JobError("manifest target.benchmark.{} = {!r} must be a number from {} to {}; fix [benchmark] in "
                           "deploy.toml".format(key, value, low, high))
    return Plan.from_manifest(settings)


def _host_version(spool: Spool, job: str) -> str:
    manifest = _try_manifest(spool.job_dir(job))
    return str(manifest.raw.get("edgekit_version", "unknown")) if manifest is not None else "unknown"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise JobError("the job has no {}".format(what)) from None


def _try_manifest(folder: Path) -> Any:
    try:
        return load_manifest_bytes((folder / MANIFEST).read_bytes())
    except (OSError, ManifestError, json.JSONDecodeError):
        return None


def cleanup_builds(spool: Spool) -> None:
    """Remove private build directories an earlier (killed) agent left behind."""
    for path in spool.engines.glob(".build-*"):
        shutil.rmtree(str(path), ignore_errors=True)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
