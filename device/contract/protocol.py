"""The spool protocol: what the host's client and the agent must agree on about an agent root (DESIGN.md §4).

Every step another process can observe is a rename or an append, so a crash (of the host, the connection
or the agent) never leaves a half-written thing where a reader would take it as whole:

    blobs/<sha256>          content store (uploaded as ``<sha>.<writer>.part``; the agent renames each into the
                            store when it takes the job that names it, once its hash matches the signed manifest)
    incoming/<job>.part/    a job being published (manifest, signature, and ``writer``: whose parts to take)
    queue/<job>/            published jobs (renamed from incoming/)
    jobs/<job>/             state.json, events.jsonl (append-only), report.json, build artefacts
    engines/<key>/          built engines, content-addressed by the build key
    models/<name>/current   symlink to the active engine; ``previous`` keeps the one before
    latency/<key>.json      measured latency-model tables (``latency_model`` jobs, see below)

The agent's side of it is ``device/agent/spool.py``; the host's is ``host/ship/transports/client.py``.
Both take the names below from here, so neither can drift from the other.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Dict, List, Optional, Tuple

BLOBS = "blobs"
INCOMING = "incoming"
QUEUE = "queue"
JOBS = "jobs"
ENGINES = "engines"
MODELS = "models"
LAYOUT = (BLOBS, INCOMING, QUEUE, JOBS, ENGINES, MODELS)  # whichever side comes first creates them

STATE = "state.json"  # in jobs/<job>/: the agent's progress, replaced atomically
EVENTS = "events.jsonl"  # in jobs/<job>/: one JSON line per event, append-only, followed by the host
REPORT = "report.json"  # in jobs/<job>/: written once, last; its presence ends the job
TERMINAL_STATES = ("done", "failed")

TRUSTED_KEYS = "trusted_keys"  # the hosts' public keys whose signed manifests the agent accepts
DEVICE_INFO = "device.json"  # the agent's description of the device (runtimes, CPU), written at its start: read by
# the host on each push instead of running `edgekit-agent status` there (plain JSON, replaced atomically)
STORE_STATE = "store.json"  # the store's disk usage and limits as the agent's last gc left them: read by the host
# to skip a remote `edgekit-agent gc` when the upload fits with room to spare (plain JSON, replaced atomically)
WRITER = "writer"  # in a published job's folder: the writer whose ``blobs/<sha>.<writer>.part`` uploads the agent
# hash-checks against the signed manifest and moves into the store when it takes the job (spool version 2)
SPOOL_VERSION = 2  # 1: the host commits each upload with `edgekit-agent commit-blob`; 2: the agent does it itself
HEARTBEAT = "agent.heartbeat"  # its mtime is the agent's pulse: touched every second, also while a job runs
HEARTBEAT_S = 1.0
STALE_PART_S = 15 * 60  # an upload untouched this long is abandoned (a cut one resumes well within it)
STALE_INCOMING_S = 60  # publishing takes milliseconds


def part_name(sha: str, writer: str = "") -> str:
    """The working name of one writer's upload of a blob: concurrent writers never share a file."""
    return "{}.{}.part".format(sha, writer) if writer else "{}.part".format(sha)


def staging_name(job: str) -> str:
    """A job's folder under incoming/ while it is written: the agent sweeps ``*.part`` there, never reads it."""
    return "{}.part".format(job)


def new_job_id(now: Optional[float] = None) -> str:
    """Sortable by publish time, unique without coordination."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return "{}-{}".format(stamp, secrets.token_hex(3))


def parse_event_chunk(chunk: bytes, offset: int) -> Tuple[List[Dict[str, Any]], int]:
    """The events in bytes read from ``offset``, and the offset after the last whole line (the next read's)."""
    end = chunk.rfind(b"\n") + 1
    events = [json.loads(line) for line in chunk[:end].decode("utf-8").splitlines() if line.strip()]
    return events, offset + end


# -- job kinds ------------------------------------------------------------------------------------
# A published job is a deployment unless its signed manifest says ``"kind": LATENCY_MODEL``: then it carries only
# ONNX files (one layer at one width each) and the plan in the manifest's ``latency`` object (device/contract/
# latency.py), and its report holds the measured table instead of a deployment.
DEPLOY = "deploy"
LATENCY_MODEL = "latency_model"
JOB_KINDS = (DEPLOY, LATENCY_MODEL)
LATENCY = "latency"  # <root>/latency/<key>.json: the measured tables, one per device/backend/precision/graph/batch


def job_kind(manifest: Dict[str, Any]) -> str:
    """The kind a manifest declares (older hosts wrote none: a deployment)."""
    kind = manifest.get("kind", DEPLOY)
    if kind not in JOB_KINDS:
        raise ValueError("manifest: kind {!r} is not one of {}".format(kind, ", ".join(JOB_KINDS)))
    return str(kind)
