"""The latency-model job's plan and result: what the host asks the agent to time, as data only.

The host sends one small ONNX file per (layer shape, input width, output width) the width search may choose,
plus a few whole-model variants that tie the per-layer sum to whole-model latency (``calibration``). The plan
is part of the signed manifest; the files are listed in it by sha256 like any bundle file. Nothing in it is
code: names, numbers and file names the manifest checks already.

A variant is one file, or one file per model-file kind (``model.onnx``, ``model.int8.cpu.onnx``,
``model.int8.qdq.onnx``...): the INT8 forms of the same variant, quantised on the host, so the agent times the
file its runtime would build at the precision it ships (``variant_file`` asks ``model_files``, like a push).
``mode`` is "layers" (every variant built and timed alone: CPU runtimes by default) or "profile" (whole models
only, each timed and run under the runtime's per-layer profiler: TensorRT, where one engine per layer variant
would cost minutes each, and CPU runtimes with ``prune.latency_model = "profile"``); the profile comes back in
the report for the host to map onto its layers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional

from .manifest import MODEL_FP16, MODEL_FP32, MODEL_INT8_QDQ_FP16
from .model_files import MODEL_VARIANTS, model_file

MAX_MODELS = 2000  # variants one job may ask for
MODES = ("layers", "profile")
FORMS_EXTRA = (MODEL_FP16, MODEL_INT8_QDQ_FP16)  # TensorRT 11's FP16-typed forms (its plan picks them by name)
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
    forms = {}
    for ident, entry in variants.items():
        form = {MODEL_FP32: entry} if isinstance(entry, str) else entry
        if not isinstance(ident, str) or not isinstance(form, dict) or not form:
            raise LatencyPlanError("manifest latency: variant {!r} must name a file, or a file per model kind".format(
                ident))
        for kind, name in form.items():
            if kind not in MODEL_VARIANTS + FORMS_EXTRA or not isinstance(name, str) or name not in files:
                raise LatencyPlanError("manifest latency: variant {!r} names {!r} as {!r}, which the bundle does not "
                                       "list (or is no model kind)".format(ident, name, kind))
        forms[ident] = dict(form)
    mode = data.get("mode", "layers")
    if mode not in MODES:
        raise LatencyPlanError("manifest latency: 'mode' must be one of {}".format(", ".join(MODES)))
    race = data.get("race", False)
    if not isinstance(race, bool):
        raise LatencyPlanError("manifest latency: 'race' must be true or false")
    return {"graph": graph, "batch": batch, "max_seconds": float(seconds), "iterations": iterations,
            "variants": forms, "mode": mode, "race": race}


def variant_file(form: Mapping[str, str], backend: str, precision: str, int8_mode: str = "explicit",
                 cpu: Optional[Mapping[str, Any]] = None) -> str:
    """The file of a variant ``backend`` builds at ``precision`` on this CPU: the same choice a push makes."""
    return form[model_file(backend, precision, int8_mode, cpu, shipped=list(form))]


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
