"""``edgekit rollback``: ask a device's agent, with a signed request, to serve an engine it already has again.

The request travels like a bundle (signed by this host's key, published into the queue, followed like a
job), so the agent stays the only writer of ``current`` and only trusted hosts can switch it
(``device/contract/rollback.py``).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from ...device.contract.manifest import canonical_bytes
from ...device.contract.protocol import new_job_id
from ...device.contract.rollback import rollback_manifest
from ..config import Config, host_home
from .keys import load_or_create_key, sign
from .session import EventSink, follow, lost_connection, open_device


def roll_back_device(config: Config, name: str, to: Optional[str], on_event: EventSink) -> dict[str, Any]:
    """Publish a signed rollback of the project's model on ``name`` (to engine ``to``, default ``previous``)
    and follow it to its report (kept by the rollout record, not the run history: it measured nothing)."""
    device = config.device(name)
    key = load_or_create_key(host_home())
    payload = canonical_bytes(rollback_manifest(config.project.name, to, time.time()))
    transport = open_device(name, device, key, "roll back again")
    try:
        job = new_job_id()
        with lost_connection(name, f"publishing rollback {job}; roll back again"):
            transport.publish(job, payload, sign(key, payload))
        report = follow(transport, job, on_event)
    finally:
        transport.close()
    return report
