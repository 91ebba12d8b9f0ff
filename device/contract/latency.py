"""The latency-model job's plan and result: what the host asks the agent to time, as data only.

The host sends one small ONNX file per (layer shape, input width, output width) the width search may choose,
plus a few whole-model variants that tie the per-layer sum to whole-model latency (``calibration``). The plan
is part of the signed manifest; the files are listed in it by sha256 like any bundle file. Nothing in it is
code: names, numbers and file names the manifest checks already.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping

MAX_MODELS = 2000  # variants one job may ask for
MAX_SECONDS = 3600.0
MIN_ITERATIONS = 3


class LatencyPlanError(ValueError):
    """The manifest's ``latency`` object is malformed; the message names the field."""


def parse_plan(data: Any, files: Mapping[str, Any]) -> Dict[str, Any]:
    """Check the manifest's ``latency`` object: every variant names a file of the bundle, the bounds are sane."""
    if not isinstance(data, dict):
        raise LatencyPlanError("manifest: a latency_model job needs a 'latency' object")
    graph = data.get("graph")
    if not isinstance(graph, str) or not graph:
        raise LatencyPlanError("manifest latency: 'graph' must be the model graph's hash")
    batch = data.get("batch")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096:
        raise LatencyPlanError("manifest latency: 'batch' must be an integer from 1 to 4096")
    seconds = data.get("max_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
        raise LatencyPlanError("manifest latency: 'max_seconds' must be a number above 0 and at most {}".format(
            MAX_SECONDS))
    iterations = data.get("iterations", MIN_ITERATIONS)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= 1000:
        raise LatencyPlanError("manifest latency: 'iterations' must be an integer from 1 to 1000")
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants or len(variants) > MAX_MODELS:
        raise LatencyPlanError("manifest latency: 'variants' must map 1 to {} variant ids to files".format(MAX_MODELS))
    for ident, name in variants.items():
        if not isinstance(ident, str) or not isinstance(name, str) or name not in files:
            raise LatencyPlanError("manifest latency: variant {!r} names {!r}, which the bundle does not list".format(
                ident, name))
    return {"graph": graph, "batch": batch, "max_seconds": float(seconds), "iterations": iterations,
            "variants": dict(variants)}


def table_key(graph: str, identity: Mapping[str, Any], precision: str, batch: int,
              options: Mapping[str, Any]) -> str:
    """The cache key of a measured table: the model graph, the device's backend identity (versions, CPU),
    the precision, the batch and the build options that change speed (threads). Two pushes of the same
    project to the same device share it: the second measures nothing."""
    payload = {"graph": graph, "identity": dict(identity), "precision": precision, "batch": batch,
               "options": dict(options)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def missing(plan: Mapping[str, Any], table: Mapping[str, float]) -> List[str]:
    """Variant ids still to measure (a cached table may cover some: a job cut by its time bound resumes)."""
    return sorted(ident for ident in plan["variants"] if ident not in table)
