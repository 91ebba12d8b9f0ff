"""Reports as rows (pure) and as rich tables (presentation)."""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _mb(size: Optional[int]) -> str:
    return f"{size / 1e6:.2f} MB" if size else "-"


def host_accuracy(report: dict[str, Any]) -> Optional[float]:
    """Host top-1 of the very model file the device ran."""
    return report.get("host", {}).get("accuracy_by_file", {}).get(report.get("model_file", ""))


def latency_rows(report: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """One row per benchmarked batch size with what the latency table shows."""
    status = report.get("status")
    if status != "done":  # "failed", or a job still in flight ("published" history stub, "running", ...)
        default = "unknown error" if status == "failed" else "no report yet"
        return [{"device": device, "status": status or "unknown", "error": report.get("error", default)}]
    validation = report["validation"]
    runtime_auto = bool(report.get("auto")) and report["auto"].get("runtime_auto", True)  # older reports: auto
    backend = report["backend"] + (" (fallback)" if report.get("fallback") else " (auto)" if runtime_auto else "")
    rows = []
    serving = served_per_batch(report)
    for bench in report["benchmarks"]:
        latency = bench["latency_ms"]
        served = serving.get(bench["batch"])
        checked = (served or {}).get("validation") or validation  # the engine serving this batch size
        rows.append({
            "device": device, "status": "done",
            "backend": served["backend"] + (" (auto)" if runtime_auto else "") if served else backend,
            "precision": served["precision"] if served else report["precision"],
            "batch": bench["batch"], "p50_ms": latency["median"], "p90_ms": latency["p90"], "p99_ms": latency["p99"],
            "cv_percent": latency["cv_percent"], "images_per_s": bench["images_per_s"],
            "validation": "passed" if checked["passed"] else "FAILED", "model_file": served_file(report, served),
            "top1_agreement": checked["top1_agreement"],
            "model_bytes": (served or {}).get("model_size_bytes") or report.get("model_size_bytes"),
            "host_top1": host_accuracy(dict(report, **served) if served else report),
            "engine_reused": report.get("engine_reused"),
            "baseline_p50_ms": bench.get("baseline", {}).get("latency_ms", {}).get("median"),
            "speedup": bench.get("speedup"), "baseline_top1": baseline_accuracy(report),
            "baseline": baseline_label(report, bench["batch"]), "speedup_fp32": bench.get("speedup_fp32"),
            "precision_shown": precision_shown(dict(report, **served)) if served else precision_shown(report),
        })
    return rows


def served_per_batch(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Batch size → the engine serving it, when ``precision = "auto"`` kept more than one (a serving map)."""
    serving = {int(b): entry for b, entry in (report.get("serving") or {}).items()}
    return serving if len({entry.get("engine_key") for entry in serving.values()}) > 1 else {}


def served_file(report: dict[str, Any], served: Optional[dict[str, Any]]) -> str:
    """The model file serving a batch size: its serving-map entry's, else the report's one engine's."""
    return (served or {}).get("model_file") or report.get("model_file") or "?"


def serving_lines(report: dict[str, Any]) -> list[str]:
    """``precision = "auto"``: per batch size, which file and precision serve it and why (one line each)."""
    serving = report.get("serving") or {}
    return [f"batch {b} served by {serving[b]['reason']}" for b in sorted(serving, key=int)]


def baseline_label(report: dict[str, Any], batch: Optional[int] = None) -> str:
    """What the headline speed-up is measured against, e.g. 'unpruned bf16 on openvino': at ``batch``, the
    baseline measured there (the fastest at that batch size), else the primary batch size's (reports before the
    baseline ran at the runtime's default precision: 'unpruned FP32 on <runtime>')."""
    bench = next((b for b in report.get("benchmarks") or [] if b.get("batch") == batch), {}) if batch else {}
    if (bench.get("baseline") or {}).get("label"):
        return bench["baseline"]["label"]
    baseline = report.get("baseline") or {}
    return baseline.get("label") or f"unpruned FP32 on {baseline.get('backend') or report.get('backend', '?')}"


def precision_shown(report: dict[str, Any]) -> str:
    """'int8', 'fp16 (bf16)' where the runtime ran another float precision than the name, '(auto)' when chosen."""
    precision, executed = report.get("precision", "?"), report.get("executed_precision") or ""
    names = {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}
    shown = f"{precision} ({names.get(executed, executed)})" if precision == "fp16" and executed and \
        names.get(executed, executed) != precision else precision
    return shown + (" (auto)" if report.get("precision_requested") == "auto" else "")


def baseline_accuracy(report: dict[str, Any]) -> Optional[float]:
    """Host top-1 of the unpruned FP32 baseline, when the device benchmarked it."""
    if not report.get("baseline"):
        return None
    return report.get("host", {}).get("accuracy_by_file", {}).get(report["baseline"].get("model_file", ""))


def latency_table(rows: list[dict[str, Any]], title: str = "edgekit latency report") -> Table:
    with_baseline = any(row.get("speedup") for row in rows)
    table = Table(title=title)
    columns = ["device", "backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s"]
    columns += ["baseline p50 ms", "speed-up", "vs strict FP32"] if with_baseline else []
    columns += ["validation", "model size", "host top-1"]
    for column in columns:
        table.add_column(column, justify="right" if column[0] in "bpis" or "ms" in column else "left")
    for row in rows:
        if row["status"] != "done":
            shown = "[red]failed[/red]" if row["status"] == "failed" else f"[yellow]{escape(row['status'])}[/yellow]"
            table.add_row(row["device"], shown, escape(row["error"]), *[""] * (len(columns) - 3))
            continue
        cells = [row["device"], row["backend"], row.get("precision_shown", row["precision"]), str(row["batch"]),
                 f"{row['p50_ms']:.3f}",
                 f"{row['p90_ms']:.3f}", f"{row['p99_ms']:.3f}", f"{row['images_per_s']:.0f}"]
        if with_baseline:
            cells += [f"{row['baseline_p50_ms']:.3f}" if row.get("baseline_p50_ms") else "-",
                      f"[bold]{row['speedup']:.2f}×[/bold]" if row.get("speedup") else "-",
                      f"{row['speedup_fp32']:.2f}×" if row.get("speedup_fp32") else "-"]
        cells += [("[green]passed[/green]" if row["validation"] == "passed" else "[red]FAILED[/red]")
                  + f" ({row['top1_agreement']:.1%})", _mb(row["model_bytes"]),
                  _top1(row["host_top1"], row.get("baseline_top1"))]
        table.add_row(*cells)
    return table


def _top1(final: Optional[float], baseline: Optional[float]) -> str:
    if final is None:
        return "-"
    return f"{baseline:.2%} → {final:.2%}" if baseline is not None else f"{final:.2%}"


def stage_table(stages: list[dict[str, Any]]) -> Table:
    """One row per pipeline stage (INT8 evaluation: one per file): what it made, its accuracy, its time."""
    table = Table(title="host pipeline (top-1 on held-out data, host latency with ONNX Runtime)")
    for column in ("stage", "", "time", "params", "MACs", "ONNX size", "b1 ms", "b32 ms", "top-1", "note"):
        table.add_column(column, justify="left" if column in ("stage", "", "note") else "right")
    shown: set[str] = set()
    for stage in stages:
        latency = {int(k): v for k, v in stage.get("latency_ms", {}).items()}
        step = stage.get("step", "")
        first = step not in shown
        shown.add(step)
        status = stage.get("status", "")
        timing = (f"{stage['wall_s']:.1f}s" if status == "ran" else "cached") if first and "wall_s" in stage else ""
        table.add_row(stage["stage"], step if first else "", timing,
                      f"{stage['params']:,}" if "params" in stage else "",
                      f"{stage['macs'] / 1e6:.1f} M" if "macs" in stage else "",
                      _mb(stage.get("onnx_bytes")) if "onnx_bytes" in stage else "",
                      f"{latency[1]:.3f}" if 1 in latency else "", f"{latency[32]:.3f}" if 32 in latency else "",
                      f"{stage['top1']:.2%}" if stage.get("top1") is not None else "",
                      stage.get("note", "") + ("; shipped" if stage.get("chosen") else ""))  # the INT8 route chosen
    return table


def backend_line(report: dict[str, Any]) -> str:
    """Which backend ran, with the versions it reported, e.g. 'tensorrt 10.3.0 on Orin (8.7), CUDA 12060'."""
    about = report.get("backend_describe", {})
    parts = [report.get("backend", "?"), str(about.get("version", ""))]
    if about.get("device"):
        parts.append(f"on {about['device']} ({about.get('compute_capability', '?')})")
    if about.get("cuda_runtime"):
        parts.append(f"CUDA {about['cuda_runtime']}")
    if about.get("cpu"):
        parts.append(f"on {about['cpu']}")
    isa = about.get("isa")
    if isinstance(isa, dict) and isa.get("family") in ("x86", "arm"):  # what decides the INT8 file (model_files)
        parts.append(f"[{' '.join(isa.get('int8_dot') or ['no INT8 dot product'])}]")
    jetson = report.get("telemetry", {}).get("device", {}).get("jetson") or {}
    if jetson.get("jetson"):
        parts.append(f"— {jetson.get('model')}, L4T {jetson.get('l4t') or '?'}, "
                     f"JetPack {jetson.get('jetpack') or '?'}, nvpmodel {jetson.get('nvpmodel') or '?'}")
    return " ".join(p for p in parts if p)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What one push delivered, in words: speed-up over the named baseline (the unpruned model at the runtime's
    default precision) and over strict FP32, accuracy, validation."""
    if report.get("status") != "done":
        return []
    serving = served_per_batch(report)
    lines = validation_lines(report, serving)
    final, baseline = host_accuracy(report), baseline_accuracy(report)
    speedups = {b["batch"]: b["speedup"] for b in report.get("benchmarks", []) if b.get("speedup")}
    if speedups and final is not None and baseline is not None:
        users = {b: baseline_label(report, b) for b in speedups}
        final_model = (f"final {precision_shown(report)} model on {report.get('backend', '?')}" if not serving else
                       "final model (" + ", ".join(f"batch {b}: {precision_shown(dict(report, **entry))} on "
                                                   f"{entry['backend']}" for b, entry in sorted(serving.items())) + ")")
        if len(set(users.values())) == 1:
            versus = f"{users[next(iter(users))]} (the unpruned model as a user would run it there): " + ", ".join(
                f"{s:.2f}× at batch {b}" for b, s in speedups.items())
        else:  # at each batch size the runtime/precision fastest there for the unpruned model
            versus = "the unpruned model as a user would run it at each batch size: " + "; ".join(
                f"b{b}: {s:.2f}× vs {users[b]}" for b, s in speedups.items())
        top1 = f"host top-1 {baseline:.2%} → {final:.2%} ({(final - baseline) * 100:+.2f} pt)"
        if serving and any(served_file(report, entry) != report.get("model_file") for entry in serving.values()):
            top1 += f" (of {report.get('model_file')}, batch {min(serving)}'s file)"
        lines.append(f"{final_model} vs {versus}; {top1}")
        strict = {b["batch"]: b["speedup_fp32"] for b in report.get("benchmarks", []) if b.get("speedup_fp32")}
        second = (report.get("baseline_fp32") or {}).get("label")
        labels = {b["batch"]: (b.get("baseline_fp32") or {}).get("label") or second for b in report["benchmarks"]}
        if strict and all(labels.get(b) == users.get(b) for b in strict):  # the same engines: said once
            pass
        elif strict and len(set(labels.values())) > 1:  # a serving map over two runtimes: each its own
            lines.append("vs unpruned strict FP32 on the runtime serving each batch size: " + ", ".join(
                f"{s:.2f}× at batch {b} ({labels[b]})" for b, s in strict.items()))
        elif strict and second:
            lines.append(f"vs {second}: " + ", ".join(f"{s:.2f}× at batch {b}" for b, s in strict.items()))
        if report["baseline"].get("chosen_because"):
            lines.append(f"baseline runtime, {report['baseline']['chosen_because']}")
    return lines


def validation_lines(report: dict[str, Any], serving: dict[int, dict[str, Any]]) -> list[str]:
    """The device's validation of the file it serves, or with a serving map, of the file serving each batch size
    (each validated on its own; one line per file)."""
    def line(what: str, validation: dict[str, Any]) -> str:
        verdict = "passed" if validation["passed"] else "FAILED"
        return (f"device validation of {what}: {verdict} (top-1 agreement {validation['top1_agreement']:.1%} with "
                f"the host's outputs, worst cosine {validation.get('cosine_min', 0):.4f})")

    if not serving or not all(entry.get("validation") for entry in serving.values()):
        return [line(str(report.get("model_file")), report["validation"])]
    files: dict[str, list[int]] = {}
    for b, entry in sorted(serving.items()):
        files.setdefault(entry.get("engine_key") or str(b), []).append(b)
    return [line(f"{serving[sizes[0]]['model_file']} on {serving[sizes[0]]['backend']} (serves batch "
                 f"{', '.join(map(str, sizes))}, {_mb(serving[sizes[0]].get('model_size_bytes'))})",
                 serving[sizes[0]]["validation"]) for sizes in files.values()]


def auto_line(auto: dict[str, Any]) -> str:
    """Which runtime ``backend = "auto"`` kept and why, with the runtimes it dropped."""
    dropped = [f"{c.get('name') or c['backend']}: {c['reason']}" for c in auto.get("candidates", [])
               if not c.get("passed")]
    return auto.get("message", "") + (f" (dropped {'; '.join(dropped)})" if dropped else "")


def int8_route_line(report: dict[str, Any]) -> str | None:
    """When QAT ran: which INT8 route shipped (QAT, or the post-training route it did not beat) and why QAT ran."""
    calibration = report.get("host", {}).get("calibration", {})
    qat = calibration.get("qat")
    if report.get("precision") != "int8" or not qat:
        return None
    return (f"INT8 route: {calibration.get('chosen')} ({calibration.get('int8')}); QAT ran because "
            f"{calibration.get('reason', 'it was asked for')}: {qat.get('epochs')} epoch(s) in "
            f"{qat.get('seconds', 0):.0f}s")


def print_report(console: Console, report: dict[str, Any], device: str) -> None:
    console.print(latency_table(latency_rows(report, device)))
    for line in summary_lines(report):
        console.print(line)
    if report.get("status") == "done":
        console.print(f"[dim]backend: {escape(backend_line(report))}[/dim]")  # its ISA list is in brackets
    for bench in report.get("benchmarks", []):
        if "warning" in bench:
            console.print(f"[yellow]warning (batch {bench['batch']}): {bench['warning']}[/yellow]")
    if report.get("fallback"):
        console.print(f"[yellow]{report['fallback']}[/yellow]")
    if report.get("auto"):
        console.print(auto_line(report["auto"]))
        for line in serving_lines(report):
            console.print(escape(line))
        if report["auto"].get("precision_advice"):
            console.print(f"[yellow]warning: {escape(report['auto']['precision_advice'])}[/yellow]")
    route = int8_route_line(report)
    if route:
        console.print(route)
    fp_layers = report.get("host", {}).get("calibration", {}).get("fp_layers")
    if report.get("precision") == "int8" and fp_layers:
        console.print(f"mixed precision: {len(fp_layers)} layer(s) kept in floating point: {', '.join(fp_layers)}")
    for line in model_warnings(report):
        console.print(f"[yellow]warning: {line}[/yellow]")
    if report.get("plots"):
        console.print(f"plots: {', '.join(report['plots'])}")


SLOWER = 0.9  # a speed-up under this is a slowdown, not the noise of interleaved medians on a busy device


def model_warnings(report: dict[str, Any]) -> list[str]:
    """What the user should know about the model itself: trained at chance, INT8 slower than FP32, slower than
    the baseline at a batch size, layers left unpruned."""
    host, lines = report.get("host", {}), []
    if host.get("chance_warning"):  # the trained model guesses: every figure below is for a model that does nothing
        lines.append(host["chance_warning"])
    slower = host.get("int8_slower_than_fp32", {}).get(report.get("model_file", ""))
    # the host timed its files on one runtime (ONNX Runtime): the warning holds only where the device ran that one
    if report.get("precision") == "int8" and report.get("backend") == host.get("reference_runtime") and slower:
        lines.append(f"{report['model_file']} ran slower than the FP32 model on the host's ONNX Runtime ({slower}); "
                     "on this device precision = \"fp32\" may be faster")
    for bench in report.get("benchmarks") or []:
        speedup = bench.get("speedup")
        if speedup is not None and speedup < SLOWER:
            label = baseline_label(report, bench["batch"])
            lines.append(f"at batch {bench['batch']} the pushed model runs at {speedup:.2f}× the speed of the baseline "
                         f"({label}): slower than the model it came from, run as users run it; the auto table says "
                         "why faster candidates were not served (validation, build), or prune more, or keep the "
                         "unpruned model on this device")
    protected = host.get("pruning", {}).get("protected") or {}
    if protected:
        lines.append(f"{len(protected)} layer group(s) left unpruned (torch-pruning cannot follow them): "
                     f"{', '.join(protected)}")
    return lines


def compare_rows(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Per batch size: median latency before and after with the ratio, and each run's own baseline speed-up."""
    before = {b["batch"]: b for b in old.get("benchmarks", [])}
    rows = []
    for bench in new.get("benchmarks", []):
        if bench["batch"] not in before:
            continue
        previous = before[bench["batch"]]
        a, b = previous["latency_ms"]["median"], bench["latency_ms"]["median"]
        rows.append({"batch": bench["batch"], "old_p50_ms": a, "new_p50_ms": b, "speedup": a / b if b else None,
                     "old_baseline_p50_ms": previous.get("baseline", {}).get("latency_ms", {}).get("median"),
                     "new_baseline_p50_ms": bench.get("baseline", {}).get("latency_ms", {}).get("median"),
                     "old_vs_baseline": previous.get("speedup"), "new_vs_baseline": bench.get("speedup"),
                     "old_baseline": baseline_label(old, bench["batch"]),
                     "new_baseline": baseline_label(new, bench["batch"]),
                     "old_vs_fp32": previous.get("speedup_fp32"), "new_vs_fp32": bench.get("speedup_fp32"),
                     "old_top1": host_accuracy(old), "new_top1": host_accuracy(new)})
    return rows


def compare_table(old_job: str, new_job: str, rows: list[dict[str, Any]]) -> Table:
    """``edgekit compare``: the rows of ``compare_rows`` as a table."""
    names = rows[0] if rows else {}
    # one baseline per run: named in the header; per batch size (each the fastest there): named in each cell
    each = {key: len({row[key] for row in rows}) > 1 for key in ("old_baseline", "new_baseline")}
    table = Table(title=f"{old_job} → {new_job}")
    for column in ("batch", "old p50 ms", "new p50 ms", "new vs old",
                   f"old vs {'its baseline' if each['old_baseline'] else names.get('old_baseline', 'baseline')}: "
                   "p50 / speed-up",
                   f"new vs {'its baseline' if each['new_baseline'] else names.get('new_baseline', 'baseline')}: "
                   "p50 / speed-up",
                   "vs strict FP32 old → new", "host top-1 old → new"):
        table.add_column(column, justify="right")

    def versus(p50: Optional[float], ratio: Optional[float], label: Optional[str] = None) -> str:
        return f"{p50:.3f} ms / {ratio:.2f}×" + (f" ({label})" if label else "") if p50 and ratio else "-"

    def top1(value: Optional[float]) -> str:
        return f"{value:.2%}" if value is not None else "-"

    def ratio(value: Optional[float]) -> str:
        return f"{value:.2f}×" if value else "-"

    for row in rows:
        table.add_row(str(row["batch"]), f"{row['old_p50_ms']:.3f}", f"{row['new_p50_ms']:.3f}",
                      f"{row['speedup']:.2f}×" if row["speedup"] else "-",
                      versus(row["old_baseline_p50_ms"], row["old_vs_baseline"],
                             row["old_baseline"] if each["old_baseline"] else None),
                      versus(row["new_baseline_p50_ms"], row["new_vs_baseline"],
                             row["new_baseline"] if each["new_baseline"] else None),
                      f"{ratio(row.get('old_vs_fp32'))} → {ratio(row.get('new_vs_fp32'))}",
                      f"{top1(row['old_top1'])} → {top1(row['new_top1'])}")
    return table


def optimize_lines(host: dict[str, Any]) -> list[str]:
    """``edgekit optimize``: which INT8 route ships (ptq, ptq+fallback, qat or qat+fallback), layers kept in float."""
    calibration, lines = host.get("calibration") or {}, []
    if calibration.get("int8"):
        lines.append(f"INT8: {calibration['int8']} ({calibration.get('chosen')})")
    if calibration.get("fp_layers"):
        lines.append(f"mixed precision: kept in floating point: {', '.join(calibration['fp_layers'])}")
    return lines


def devices_table(rows: list[dict[str, Any]]) -> Table:
    """``edgekit devices``: one row per device (its deploy.toml settings)."""
    table = Table(title="devices")
    for column in ("name", "kind", "host", "backend", "precision", "groups"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["kind"], row["host"] or "-", row["backend"], row["precision"],
                      ",".join(row["groups"]) or "-")
    return table


def check_table(info: dict[str, Any]) -> Table:
    """``edgekit device check``: agent, backends, CUDA bindings, Jetson model, disk and active models."""
    table = Table(title=f"{info['device']} ({info['destination']})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("agent", f"{info['agent_version']} " + ("[green]running[/green]" if info["agent_running"]
                                                          else "[red]not running[/red]"))
    for backend, about in info["backends"].items():
        text = (f"{about.get('version')} ({', '.join(about.get('providers', [])) or about.get('device', '')})"
                if about.get("available") else f"[yellow]unavailable[/yellow]: {about.get('reason')}")
        table.add_row(backend, text)
    for binding in info.get("cuda", []):
        state = (f"[green]works[/green] (driver {binding.get('driver')})" if binding.get("usable")
                 else f"[yellow]unusable[/yellow]: {binding.get('reason')}")
        table.add_row(f"CUDA: {binding['binding']}", f"{binding.get('version') or ''} {state}".strip())
    device = info["device_info"]
    jetson = device.get("jetson") or {}
    table.add_row("device", str(jetson.get("model") or f"{device.get('machine')} {device.get('system')}"))
    if jetson.get("jetson"):
        table.add_row("L4T / JetPack", f"{jetson.get('l4t') or 'missing'} / {jetson.get('jetpack') or 'missing'}")
        table.add_row("nvpmodel", jetson.get("nvpmodel") or "missing")
    free = info.get("free_disk_bytes")
    table.add_row("free disk", f"{free / 1e9:.1f} GB" if free else "-")
    table.add_row("active models", ", ".join(f"{k} → {v}" for k, v in info["models"].items()) or "none")
    for line in health_lines(info.get("model_health", {})):
        table.add_row("[yellow]warning[/yellow]", escape(line))
    return table


def health_lines(health: dict[str, dict[str, Any]], only: Optional[str] = None) -> list[str]:
    """One line per model that is not served as deployed (for the host's ``status`` and ``device check``)."""
    lines = []
    for model, entry in sorted(health.items()):
        if only is not None and model != only:
            continue
        if not entry["ok"]:
            serves = ("the previous engine {} would serve (the agent switches to it when it runs)".format(
                entry["serving"][:12]) if entry["serving"] else "no engine serves it: push it again")
            lines.append("model {}: {}; {}".format(model, entry["problem"], serves))
        elif entry.get("repaired"):
            note = entry["repaired"]
            lines.append("model {}: the engine of its last deployment was gone ({}); the agent switched back to "
                         "the previous engine {}: push again to deploy the newer one".format(
                             model, note.get("reason"), str(note.get("to"))[:12]))
    return lines


def rollout_table(rows: list[dict[str, Any]], title: str) -> Table:
    """A rollout's fleet table: per device its wave, state, backend, precision, p50, speed-up and error."""
    table = Table(title=title)
    for column in ("device", "wave", "state", "backend", "precision", "p50 ms", "speed-up", "error"):
        table.add_column(column, justify="right" if column in ("wave", "p50 ms", "speed-up") else "left")
    colours = {"done": "green", "failed": "red", "skipped": "yellow", "rolled back": "cyan"}
    for row in rows:
        state = row["state"]
        table.add_row(row["device"], str(row["wave"]), f"[{colours.get(state, 'dim')}]{state}[/]",
                      row.get("backend") or "-", row.get("precision") or "-",
                      f"{row['p50_ms']:.3f}" if row.get("p50_ms") is not None else "-",
                      f"{row['speedup']:.2f}x" if row.get("speedup") else "-", escape(row.get("error") or ""))
    return table
