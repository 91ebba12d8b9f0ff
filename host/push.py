"""``edgekit push``: optimise (cached), sign, upload what the device lacks, publish, follow, report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from edgekit.device.manifest import MODEL_BASELINE, REFERENCE
from edgekit.device.model_files import MODEL_VARIANTS
from edgekit.device.spool import new_job_id

from .bundle import files_for_device, make_manifest, manifest_bytes
from .config import Config, host_home
from .errors import CheckFailed
from .fp16 import typed_files_for
from .history import History
from .keys import load_or_create_key, public_line, sign
from .pipeline import Optimized, optimize
from .prevalidate import check_before_upload
from .transports import open_transport
from .transports.base import Transport

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


def ship(transport: Transport, optimized: Optimized, manifest: dict, signature: bytes, payload: bytes, say: Say,
         progress: UploadProgress | None = None) -> Shipment:
    """Upload missing blobs (content-addressed), then publish the job in one atomic step."""
    progress = progress or UploadProgress()
    by_hash = {entry["sha256"]: optimized.files[entry["name"]] for entry in manifest["files"]}
    missing = transport.missing(sorted(by_hash))
    sent = 0

    def count(size: int) -> None:
        nonlocal sent
        sent += size
        progress.advance(size)

    progress.start(sum(by_hash[sha].stat().st_size for sha in missing), len(missing))
    try:
        for sha in missing:
            transport.upload(sha, by_hash[sha], count)
    finally:
        progress.finish()
    say(f"uploaded {len(missing)} file(s), {sent / 1e6:.2f} MB; {len(by_hash) - len(missing)} already on the device")
    job = new_job_id()
    transport.publish(job, payload, signature)
    return Shipment(job, sent, len(by_hash) - len(missing))


def follow(transport: Transport, job: str, on_event: EventSink, poll: float = 0.1,
           stall_timeout: float = 5.0) -> dict[str, Any]:
    """Stream the job's events until its report is written.

    When no event comes for ``stall_timeout`` seconds the agent is probed: a dead local agent is
    started again (the job resumes), a dead remote one is an error that says how to go on.
    """
    offset, waited = 0, time.monotonic()
    while True:
        events, offset = transport.events(job, offset)
        for event in events:
            on_event(event)
        state = transport.state(job) or {}
        if state.get("status") in ("done", "failed"):
            report = transport.report(job)
            if report is not None:
                events, offset = transport.events(job, offset)
                for event in events:
                    on_event(event)
                return report
        if events:
            waited = time.monotonic()
        elif time.monotonic() - waited > stall_timeout:
            if not transport.agent_alive() and not transport.revive_agent():
                raise CheckFailed(f"job {job} is {state.get('status', 'unknown')} but no agent is running on the "
                                  "device; start it (`systemctl start edgekit-agent`), the job resumes, and "
                                  "`edgekit status` follows it")
            waited = time.monotonic()
        time.sleep(poll)


def push(config: Config, device_name: str, say: Say, on_event: EventSink,
         progress: UploadProgress | None = None) -> tuple[dict[str, Any], Optimized]:
    device = config.device(device_name)
    optimized = optimize(config, say)
    optimized.files.update(typed_files_for(config, device_name, device, optimized.files, say))  # TensorRT 11
    files = {name: path for name, path in optimized.files.items()
             if name != MODEL_BASELINE or config.benchmark.baseline}
    files_for_device(config, device, files, None)  # a configuration mistake fails before connecting
    key = load_or_create_key(host_home())
    transport = open_transport(device_name, device)
    try:
        if device.kind == "local":
            transport.trust(public_line(key))
        transport.ensure_agent()
        # The device's backends and CPU decide which model files it gets (edgekit.device.model_files).
        manifest = make_manifest(config, device, files, dict(optimized.host, stages=optimized.stages),
                                 transport.status())
        for model_file in [entry["name"] for entry in manifest["files"] if entry["name"] in MODEL_VARIANTS]:
            check_before_upload(files[REFERENCE], model_file, device.precision, manifest["target"]["validation"],
                                device_name)
        payload = manifest_bytes(manifest)
        signature = sign(key, payload)
        shipment = ship(transport, optimized, manifest, signature, payload, say, progress)
        say(f"published job {shipment.job} to {device_name}")
        report = follow(transport, shipment.job, on_event)
    finally:
        transport.close()
    report["uploaded_bytes"] = shipment.uploaded_bytes
    store_run(config, device_name, report)
    return report, optimized


def store_run(config: Config, device_name: str, report: dict[str, Any]) -> None:
    """The report into the run history, and beside it (``.edgekit/runs/<job>/``) its JSON and PNG plots."""
    history = History(config.state_dir / "history.db")
    if report.get("job"):
        report["plots"] = [str(p) for p in write_run_files(history.run_dir(report["job"]), report, device_name)]
    history.record(device_name, report)


def write_run_files(directory, report: dict[str, Any], device_name: str) -> list:
    import json

    from .plots import write_plots

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(dict(report, device=device_name), indent=2, default=str))
    return write_plots(dict(report, device=device_name), directory)


def budget_failures(config: Config, report: dict[str, Any]) -> list[str]:
    """Budgets from deploy.toml that this report crosses (each becomes a failed check)."""
    budget, failures = config.budget, []
    for bench in report.get("benchmarks", []):
        latency = bench["latency_ms"]
        if budget.max_p99_ms and latency["p99"] > budget.max_p99_ms:
            failures.append(f"batch {bench['batch']}: p99 {latency['p99']:.3f} ms > budget.max_p99_ms "
                            f"{budget.max_p99_ms}")
        if budget.max_median_ms and latency["median"] > budget.max_median_ms:
            failures.append(f"batch {bench['batch']}: median {latency['median']:.3f} ms > budget.max_median_ms "
                            f"{budget.max_median_ms}")
    accuracy = report.get("host", {}).get("accuracy", {})
    if budget.min_host_accuracy is not None and accuracy:
        worst = min(accuracy.values())
        if worst < budget.min_host_accuracy:
            failures.append(f"host top-1 {worst:.4f} < budget.min_host_accuracy {budget.min_host_accuracy}")
    return failures
