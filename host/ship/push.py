"""``edgekit push``: optimise (cached), sign, upload what the device lacks, publish, follow, report."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable

from ...device.contract.budget import TARGET_TOLERANCE, judged_speedup, target_failures, target_limit
from ...device.contract.budget import budget_failures as check_budget
from ...device.contract.manifest import MODEL_BASELINE, MODEL_FP16, MODEL_INT8_QDQ_FP16, REFERENCE
from ...device.contract.model_files import MODEL_VARIANTS, file_precision
from ..config import Config, DeviceSection, host_home
from ..errors import ConfigError, Interrupted
from ..optimize import Optimized, optimize
from ..optimize.prevalidate import check_before_upload, fidelity
from ..optimize.quantize.fp16 import typed_files_for
from ..records.history import History, unrecorded
from .bundle import files_for_device, latency_budget, make_manifest, manifest_bytes
from .keys import load_or_create_key, sign
from .session import (
    EventSink,
    Say,
    UploadProgress,
    connected,
    follow,
    lost_connection,
    ship,
    store_settings,
)
from .transports import Transport, open_transport


def push(config: Config, device_name: str, say: Say, on_event: EventSink,
         progress: UploadProgress | None = None, optimized: Optimized | None = None,
         on_publish: Callable[[str], None] | None = None, plots: bool = True,
         opened: Future[Transport] | None = None) -> tuple[dict[str, Any], Optimized]:
    """One device; a fleet passes the rollout's ``optimized`` (computed once), learns each job id on publish,
    leaves the PNG plots to `edgekit report --plot` (drawing them costs the host a second per device), and may
    pass the device's connection, opened while the device before it ran its job (``session.Pipeline``)."""
    device = config.device(device_name)
    if optimized is None:
        if config.prune.latency_target:  # widths chosen against this device's measured latency model
            from .latency import latency_model_file

            config = config.with_latency_model(latency_model_file(config, device_name, say, on_event))
        optimized = optimize(config, say)
    with Interrupted.during("writing FP16-typed ONNX files"):
        optimized.files.update(typed_files_for(config, device_name, device, optimized.files, say))  # TensorRT 11
    files = {name: path for name, path in optimized.files.items()
             if name != MODEL_BASELINE or config.benchmark.baseline}
    files_for_device(config, device, files, None)  # a configuration mistake fails before connecting
    key = load_or_create_key(host_home())
    history = History(config.state_dir / "history.db")
    published: list[str] = []
    try:
        with connected(device_name, device, key, opened=opened) as transport:
            with lost_connection(device_name, "preparing the device; push again"), \
                    Interrupted.during(f"preparing {device_name}"):
                status = transport.device_info()  # the runtimes and CPU, as the agent wrote them at its start
            with Interrupted.during(f"checking the files for {device_name}"):
                # The device's backends and CPU decide which model files it gets (device/contract/model_files.py).
                manifest = make_manifest(config, device, files, dict(optimized.host, stages=optimized.stages), status)
                failing = failing_alternatives(files[REFERENCE], manifest, device, device_name)
                if failing:  # precisions the device would only measure: left out; the requested one is checked
                    say(f"not shipped (would fail the device's validation): {'; '.join(failing.values())}")
                    files = {name: path for name, path in files.items() if name not in failing}
                    manifest = make_manifest(config, device, files, dict(optimized.host, stages=optimized.stages),
                                             status)
                payload = manifest_bytes(manifest)
                signature = sign(key, payload)

            def record_publish(job: str) -> None:
                published.append(job)
                history.record(device_name, published_stub(job, device_name, config.project.name))
                if on_publish is not None:
                    on_publish(job)

            with Interrupted.during(f"the upload to {device_name}"):
                shipment = ship(transport, optimized, manifest, signature, payload, say, progress,
                                store_settings(device), record_publish)
            say(f"published job {shipment.job} to {device_name}")
            with Interrupted.during(f"following job {shipment.job}", published=shipment.job):
                report = follow(transport, shipment.job, on_event)
    except Interrupted as exc:
        if published and not exc.published:  # the job went out before the interrupt landed
            raise Interrupted(exc.doing, published=published[0]) from None
        raise
    report["uploaded_bytes"] = shipment.uploaded_bytes
    outcome = latency_outcome(optimized.stages, report)
    if outcome:
        report["latency_target"] = outcome
    store_run(config, device_name, report, plots)
    return report, optimized


def failing_alternatives(reference, manifest: dict[str, Any], device: DeviceSection, device_name: str
                         ) -> dict[str, str]:
    """Check every model file of the bundle with the device's rule (at the precision it was written for) before
    upload: a file of the precision asked for that would fail stops the push (``check_before_upload``); one the
    device would only try (``auto``, or an alternative it measures to advise) is returned, to be left out."""
    failing = {}
    # The FP16-typed files too: TensorRT 11 builds them and the device judges its engine against the host's
    # outputs of that file, so their fidelity to the FP32 model is checked here or nowhere.
    checked = (*MODEL_VARIANTS, MODEL_FP16, MODEL_INT8_QDQ_FP16)
    for model_file in [entry["name"] for entry in manifest["files"] if entry["name"] in checked]:
        precision = file_precision(model_file)
        if precision == device.precision:
            check_before_upload(reference, model_file, precision, manifest["target"]["validation"], device_name)
            continue
        verdict = fidelity(reference, model_file, precision, manifest["target"]["validation"])
        if verdict is not None and not verdict["passed"]:
            failing[model_file] = f"{model_file}: {verdict['reason']}"
    return failing


def reattach(config: Config, device_name: str, job: str | None, on_event: EventSink) -> dict[str, Any]:
    """``edgekit status``: follow a job already on the device (default: its last on record), record its report."""
    history = History(config.state_dir / "history.db")
    if job is None:
        job = history.last_job(device_name)
    with lost_connection(device_name, "connecting; try again"):
        transport = open_transport(device_name, config.device(device_name))
    try:
        with lost_connection(device_name, f"looking up job {job}; try again"):
            known = (transport.state(job) or {}).get("status") != "unknown"
        if not known:
            raise ConfigError(f"device {device_name} has no job {job}")
        report = follow(transport, job, on_event)
        with lost_connection(device_name, "checking the active model; try again"):
            health = transport.status(load_engines=True).get("model_health", {})
    finally:
        transport.close()
    history.record(device_name, report)
    model = report.get("model") or config.project.name
    return dict(report, model_health={model: health[model]} if model in health else {})


def store_run(config: Config, device_name: str, report: dict[str, Any], plots: bool = True) -> None:
    """The report into the run history, and beside it (``.edgekit/runs/<job>/``) its JSON and PNG plots."""
    history = History(config.state_dir / "history.db")
    if report.get("job"):
        try:
            report["plots"] = [str(p) for p in write_run_files(history.run_dir(report["job"]), report, device_name,
                                                               plots)]
        except OSError as exc:  # a full or read-only host disk: the report still prints
            unrecorded(history.run_dir(report["job"]), device_name, report["job"], exc)
    history.record(device_name, report)


def replot(history: History, stored: dict[str, Any]) -> list[str]:
    """A stored run's report.json and PNG plots written again beside the history (``edgekit report --plot``)."""
    return [str(p) for p in write_run_files(history.run_dir(stored["job"]), stored, stored["device"])]


def write_run_files(directory, report: dict[str, Any], device_name: str, plots: bool = True) -> list:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(dict(report, device=device_name), indent=2, default=str))
    if not plots:
        return []
    from ..records.plots import write_plots

    return write_plots(dict(report, device=device_name), directory)


def published_stub(job: str, device: str, model: str) -> dict[str, Any]:
    """The history row of a job published but not yet reported: `edgekit status` finds it and re-attaches."""
    return {"job": job, "status": "published", "model": model,
            "error": f"job {job}: no report yet (it may still be running): `edgekit status {device} {job}` follows it"}


def budget_failures(config: Config, report: dict[str, Any]) -> list[str]:
    """Limits the job crossed: decided by the agent before the switch (a pruning latency target among them);
    re-checked for agents older than that."""
    if report.get("budget_failures"):
        return list(report["budget_failures"])
    if report.get("status") != "done":
        return []
    budget = {k: v for k, v in config.budget.model_dump().items() if v is not None}
    budget.update(latency_budget(report.get("host", {})))
    return check_budget(budget, report.get("benchmarks", []), report.get("host", {}).get("accuracy", {}) or {})


def target_words(info: dict[str, Any], bench: dict[str, Any]) -> str:
    """The target and the device's figure, as the agent judged them (``target_failures``): a speed-up target by
    the speed-up over the baseline timed beside the model in the same job, when the job timed one."""
    measured, asked = float(bench["latency_ms"]["median"]), info.get("target_speedup")
    speedup = judged_speedup(asked, bench)
    if speedup is not None:
        return (f"latency target {asked:g}x over the baseline at batch {info['batch']} ({info['target_ms']:.3g} ms "
                f"when the latency model was timed): measured {speedup:.2f}x beside the baseline, {measured:.3g} ms")
    return f"latency target {info['target_ms']:.3g} ms at batch {info['batch']}: measured {measured:.3g} ms"


def latency_outcome(stages: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any] | None:
    """A latency target against the device's measurement: met or not, and the latency model's error. The prune
    row of the stage table gets the measured figure beside the predicted one."""
    info = (report.get("host", {}).get("pruning") or {}).get("latency")
    if not info or report.get("status") != "done":
        return None
    bench = next((b for b in report.get("benchmarks", []) if b.get("batch") == info["batch"]), None)
    if bench is None:
        return None
    measured = float(bench["latency_ms"]["median"])
    met = not target_failures(target_limit(info["target_ms"], info["batch"], info.get("target_speedup")), bench)
    error = (info["predicted_ms"] - measured) / measured
    verdict = (f"{target_words(info, bench)} ({'met' if met else 'missed'}, within {TARGET_TOLERANCE:.0%} allowed; "
               f"latency model predicted {info['predicted_ms']:.3g} ms, {error:+.0%})")
    # precision = "auto": the table was measured at the precision the unpruned model's race favoured; the final
    # model's race may pick another (INT8 failing validation, a pruned model where FP32 wins): say so
    final = (report.get("backend"), report.get("precision"))
    modelled = (info.get("backend"), info.get("precision"))
    if all(final) and all(modelled) and final != modelled:
        verdict += (f"; the latency model was measured on {' '.join(modelled)} but the device's race picked "
                    f"{' '.join(final)} for the final model, so the prediction was for another engine")
    for row in [r for r in stages if r.get("step") == "prune" and "predicted" in str(r.get("note", ""))]:
        row["note"] = f"{row['note']}; measured {measured:.3g} ms ({error:+.0%} predicted vs measured)"
    return dict(info, measured_ms=measured, met=met, model_error=error, verdict=verdict,
                modelled_as_shipped=not (all(final) and all(modelled) and final != modelled))
