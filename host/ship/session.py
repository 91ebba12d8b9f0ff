"""A session with one device: connect (agent running), upload what it lacks, publish a job, follow it.

Shared by ``push`` (one model), rollouts, rollbacks and the latency-model job; the stages before it
(optimise, sign) and after it (report, history) live with their callers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

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
def connected(device_name: str, device: DeviceSection, key: Any, again: str = "push again",
              opened: Optional[Future[Transport]] = None) -> Iterator[Transport]:
    """``open_device`` for the length of a ``with``; ``opened``: the connection a ``Pipeline`` opened ahead."""
    if opened is not None:
        with Interrupted.during(f"connecting to {device_name}"):
            transport = opened.result()  # open_device's own one-line errors come out of it as they are
    else:
        transport = open_device(device_name, device, key, again)
    try:
        yield transport
    finally:
        transport.close()


class Pipeline:
    """Connections opened one device ahead within a wave: while a device runs its job (the host only follows),
    the next device's SSH handshake, host-key check and agent check are done, so at ``--max-parallel 1`` a
    device's connect is off the rollout's path. Only devices of the wave being pushed are connected, never a
    later wave's (a halt leaves those uncontacted); a connection nobody took is closed at the end."""

    def __init__(self, config: Any, names: list[str], key: Any) -> None:
        self.config, self.names, self.key = config, list(names), key
        self.opened: dict[str, Future[Transport]] = {}
        self.taken: set[str] = set()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="connect")

    def take(self, name: str) -> Optional[Future[Transport]]:
        """``name``'s connection (opened ahead, else now), and the next device's started in the background."""
        with self.lock:
            future = self.opened.pop(name, None) or self._open(name)
            position = self.names.index(name) if name in self.names else len(self.names)
            self.taken.add(name)
            later = next((n for n in self.names[position + 1:] if n not in self.taken), None)
            if later is not None and later not in self.opened:
                self.opened[later] = self._open(later)
        return future

    def _open(self, name: str) -> Future[Transport]:
        return self.pool.submit(open_device, name, self.config.device(name), self.key, "push again")

    def close(self) -> None:
        """Close what was opened ahead and not taken (the wave ended early, or a device was followed instead)."""
        with self.lock:
            left, self.opened = list(self.opened.values()), {}
        for future in left:
            try:
                future.result().close()
            except Exception:  # noqa: BLE001 - an unreachable device's failed connect has nothing to close
                pass
        self.pool.shutdown(wait=True)


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
