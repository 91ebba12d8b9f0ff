"""A session with one device: connect (agent running), upload what it lacks, publish a job, follow it.

Shared by ``push`` (one model), rollouts, rollbacks and the latency-model job; the stages before it
(optimise, sign) and after it (report, history) live with their callers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ...device.contract.protocol import new_job_id
from ..config import DeviceSection
from ..errors import CheckFailed, Interrupted
from ..optimize import Optimized
from .keys import public_line
from .transports import Transport, open_transport
from .transports.sftp import ConnectionLost

STATE_EVERY_S = 1.0  # while following a quiet job: how often its state is read (for a failure without report)
Say = Callable[[str], None]
EventSink = Callable[[dict[str, Any]], None]


class UploadProgress:
    """What the upload reports as it goes; the CLI draws a bar with bytes and rate, others ignore it."""

    def start(self, total_bytes: int, files: int) -> None:
        """Called once with what is about to be sent."""

    def advance(self, sent_bytes: int) -> None:
        """Called after each chunk."""

    def finish(self) -> None:
        """Called when every blob is on the device."""


@dataclass
class Shipment:
    job: str
    uploaded_bytes: int
    skipped: int


def store_settings(device: DeviceSection) -> dict[str, Any]:
    """The device's disk settings declared in deploy.toml (the agent keeps them in its config.json)."""
    return {k: getattr(device, k) for k in ("store_limit_mb", "min_free_mb", "keep_jobs") if getattr(device, k)
            is not None}


def ship(transport: Transport, optimized: Optimized, manifest: dict, signature: bytes, payload: bytes, say: Say,
         progress: UploadProgress | None = None, settings: dict[str, Any] | None = None,
         on_publish: Callable[[str], None] | None = None) -> Shipment:
    """Make room, upload missing blobs (content-addressed, resumable), then publish the job in one atomic step."""
    progress = progress or UploadProgress()
    by_hash = {entry["sha256"]: optimized.files[entry["name"]] for entry in manifest["files"]}
    device = transport.device_name
    with lost_connection(device, "checking what the device has; push again"):
        missing = transport.missing(sorted(by_hash))
        need = sum(by_hash[sha].stat().st_size for sha in missing)
        if need or settings:
            transport.make_room(need, settings or {})
    sent = 0

    def count(size: int) -> None:
        nonlocal sent
        sent += size
        progress.advance(size)

    progress.start(need, len(missing))
    try:
        with lost_connection(device, "uploading; push again: the upload resumes where it stopped"):
            transport.upload_all({sha: by_hash[sha] for sha in missing}, count)  # one commit for them all
    finally:
        progress.finish()
    say(f"uploaded {len(missing)} file(s), {sent / 1e6:.2f} MB; {len(by_hash) - len(missing)} already on the device")
    job = new_job_id()
    with lost_connection(device, f"publishing job {job}; push again (the blobs are on the device already)"):
        transport.publish(job, payload, signature)
    if on_publish is not None:
        on_publish(job)
    return Shipment(job, sent, len(by_hash) - len(missing))


@contextmanager
def lost_connection(device: str, what: str) -> Iterator[None]:
    """A broken connection or a refusing device becomes one line naming the device and what to do."""
    try:
        yield
    except ConnectionLost as exc:
        raise CheckFailed(f"lost the connection to {device} ({exc.reason}) while {what}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CheckFailed(f"{device} refused a file operation ({reason}; its disk may be full or read-only) "
                          f"while {what}") from None


def follow(transport: Transport, job: str, on_event: EventSink, poll: float = 0.05,
           stall_timeout: float = 5.0) -> dict[str, Any]:
    """Stream the job's events until its report is written.

    Each turn reads the new events and looks for the report (whose presence ends a job: two cheap reads); the
    job's state is read only while no event comes, for a job that failed without a report. When no event comes
    for ``stall_timeout`` seconds the agent's heartbeat is checked: a dead local agent is started again (the job
    resumes), a dead remote one is an error that says how to go on.
    """
    device = transport.device_name
    with lost_connection(device, f"following job {job}; it keeps running there: `edgekit status {device} {job}` "
                                 "re-attaches"):
        return _follow(transport, job, on_event, poll, stall_timeout)


def _follow(transport: Transport, job: str, on_event: EventSink, poll: float, stall_timeout: float) -> dict[str, Any]:
    offset, waited, final_since, state, looked = 0, time.monotonic(), None, {}, 0.0
    while True:
        events, offset = transport.events(job, offset)
        for event in events:
            on_event(event)
        report = transport.report(job)
        if report is None and not events and time.monotonic() - looked >= STATE_EVERY_S:
            state, looked = transport.state(job) or {}, time.monotonic()
            if state.get("status") == "failed":
                final_since = final_since or time.monotonic()
                if time.monotonic() - final_since > 2.0:  # the device could record the state but not the report
                    report = {"job": job, "status": "failed", "error": state.get("error", "the job failed")}
        if report is not None:
            events, offset = transport.events(job, offset)
            for event in events:
                on_event(event)
            return report
        if events:
            waited = time.monotonic()
        elif time.monotonic() - waited > stall_timeout:
            if not transport.agent_alive() and not transport.revive_agent():
                raise CheckFailed(f"job {job} is {state.get('status', 'unknown')} but the agent on "
                                  f"{transport.device_name} shows no heartbeat: it is stopped, or its disk is "
                                  "read-only; start it (`systemctl start edgekit-agent`), the job resumes, and "
                                  f"`edgekit status {transport.device_name}` follows it")
            waited = time.monotonic()
        time.sleep(poll)


@contextmanager
def connected(device_name: str, device: DeviceSection, key: Any, again: str = "push again") -> Iterator[Transport]:
    """``open_device`` for the length of a ``with``."""
    transport = open_device(device_name, device, key, again)
    try:
        yield transport
    finally:
        transport.close()


def open_device(name: str, device: DeviceSection, key: Any, again: str) -> Transport:
    """Connected, with an agent serving the root (a local device trusts this host's key first)."""
    with lost_connection(name, f"connecting; {again}"), Interrupted.during(f"connecting to {name}"):
        transport = open_transport(name, device)
    try:
        with lost_connection(name, f"preparing the device; {again}"), Interrupted.during(f"preparing {name}"):
            if device.kind == "local":
                transport.trust(public_line(key))
            transport.ensure_agent()
    except BaseException:
        transport.close()
        raise
    return transport
