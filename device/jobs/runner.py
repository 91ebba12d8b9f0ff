"""Run one job: verify the bundle, build (or reuse) the engine, validate, benchmark, switch, report.

A job is safe to run again from the start: the engine is built into a private directory and renamed
into the cache, and ``current`` is switched only after validation passes. That is what makes the
agent restart-safe: an interrupted job is simply run again.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Dict, Optional

from .. import __version__, telemetry
from ..agent.spool import Spool
from ..backends import BackendUnavailable
from ..contract.manifest import ManifestError, load_manifest_bytes
from ..contract.protocol import LATENCY_MODEL, TERMINAL_STATES, job_kind
from ..contract.rollback import rollback_request
from ..contract.signing import SignatureError
from ..errors import JobError, device_error
from .context import Job, Log
from .latency import run_latency_job
from .measure import measure
from .prepare import prepare
from .rollback import roll_back
from .switch import switch
from .verify import check_accuracy_budget, resolve_files, take_uploads, try_manifest, verify_signed

MAX_RESUMES = 10  # restarts of the agent itself, never caused by the job (the worker absorbs those)


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
        Job(self.spool, job, self.log).event(kind, message, **data)

    def fail(self, job: str, message: str, details: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Record a failure: the state first (what makes the job terminal), then the report, then the event.

        Raises OSError only when not even the state can be written; the agent then frees space and retries.
        """
        report = {"job": job, "status": "failed", "error": message, "agent_version": __version__,
                  "current": None}
        report.update(details or {})
        manifest = try_manifest(self.spool.job_dir(job))
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
    def _run(self, job_id: str) -> Dict[str, Any]:
        """Verify, prepare (build or reuse, validate), measure, switch; the report of a job that succeeded."""
        job = Job(self.spool, job_id, self.log)
        job.event("stage", "verifying bundle", stage="verify")
        payload, signer = verify_signed(job.folder, self.spool.trusted_keys)
        rollback = rollback_request(payload)
        if rollback is not None:  # a signed request to serve an engine already here
            return roll_back(job, rollback[0], rollback[1], signer)
        manifest = load_manifest_bytes(payload)
        verified = take_uploads(self.spool, manifest, job.folder)  # before any check that could fail the job
        if job_kind(manifest.raw) == LATENCY_MODEL:  # no deployment: time the host's variants, switch nothing
            return dict(run_latency_job(job, manifest, resolve_files(self.spool, manifest, verified)), signer=signer,
                        agent_version=__version__)
        check_accuracy_budget(manifest)
        files = resolve_files(self.spool, manifest, verified)
        chosen = prepare(job, manifest, files)
        measured = measure(job, manifest, files, chosen.backend, chosen.engine, chosen.per_batch())
        previous = switch(job, manifest, chosen, measured.results)
        backend = chosen.backend
        return {
            "job": job_id, "status": "done", "model": manifest.model, "agent_version": __version__,
            "signer": signer, "backend": backend.name, "backend_describe": backend.describe(),
            "fallback": chosen.fallback, "precision": chosen.precision, "precision_requested": manifest.precision,
            "executed_precision": chosen.executed, "engine_key": chosen.key,
            "engine_reused": chosen.reused, "engine": chosen.meta, "model_file": chosen.model_file,
            "model_size_bytes": manifest.files[chosen.model_file].size, "validation": chosen.validation,
            "benchmarks": measured.results, "auto": chosen.auto, "baseline": measured.baseline,
            "baseline_fp32": measured.baseline_fp32, "baselines": measured.baselines,
            "telemetry": {"device": telemetry.describe_host(), **measured.telemetry},
            "current": os.readlink(str(self.spool.models / manifest.model / "current")),
            "previous": previous, "host": manifest.raw.get("host", {}),
            "serving": (chosen.auto or {}).get("serving"),
        }


def _host_version(spool: Spool, job: str) -> str:
    manifest = try_manifest(spool.job_dir(job))
    return str(manifest.raw.get("edgekit_version", "unknown")) if manifest is not None else "unknown"
