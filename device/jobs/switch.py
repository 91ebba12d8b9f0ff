"""Last step: the latency budget, then ``current`` switched to the new engine atomically.

The budget is checked on the device's own figures before the switch, so an engine over budget is built,
validated and measured, but never served; the previous engine is kept for rollback.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..agent.serving import write_map
from ..contract.budget import budget_of, latency_failures
from ..contract.manifest import Manifest
from ..errors import JobError
from .context import Job
from .prepare import Prepared, served_entry


def switch(job: Job, manifest: Manifest, chosen: Prepared, results: List[Dict[str, Any]]) -> Optional[str]:
    """Point the model's ``current`` at the chosen engine (or at the serving map of the engines chosen per batch
    size); what it pointed at before, if anything."""
    check_latency_budget(manifest, chosen, results)
    target, what = chosen.engine_dir, "engine {}".format(chosen.key[:12])
    if chosen.serving:
        keys = {b: each.key for b, each in sorted(chosen.serving.items())}
        target = write_map(job.spool.engines, keys,
                           {"backend": chosen.backend.name, "options": {"precision": chosen.precision},
                            "job": job.id, "model": manifest.model,
                            "serving": {str(b): served_entry(each, manifest)
                                        for b, each in sorted(chosen.serving.items())}})
        what = "serving map {} ({})".format(target.name[:12], ", ".join(
            "batch {}: engine {}".format(b, key[:12]) for b, key in keys.items()))
        chosen.key = target.name
    previous = job.spool.switch(manifest.model, target)
    job.event("stage", "switched {} to {}".format(manifest.model, what), stage="switch")
    return previous


def check_latency_budget(manifest: Manifest, chosen: Prepared, results: List[Dict[str, Any]]) -> None:
    """Fail the job, with the figures, when a benchmarked latency crosses the budget."""
    missed = latency_failures(budget_of(manifest.raw), results)
    if missed:
        raise JobError("over budget: {}; the active model was not changed".format("; ".join(missed)),
                       {"budget_failures": missed, "benchmarks": results, "validation": chosen.validation,
                        "backend": chosen.backend.name, "precision": chosen.precision, "engine_key": chosen.key})
