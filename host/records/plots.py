"""PNG plots of a push, written next to its stored report: where people would rather look than read.

- ``latency-b<N>.png`` per batch size: the latency distribution (CDF) of the final model, of the unpruned
  model at its runtime's default precision (the report's baseline) and at strict FP32, measured on the device
  in the same job;
- ``stages.png``: held-out top-1 against host latency for every pipeline stage that produced a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float):
    """A figure outside pyplot's global state (fleets push from threads), drawn by Agg: no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def latency_plot(report: dict[str, Any], bench: dict[str, Any], path: Path) -> Path:
    """CDF of per-iteration latency, final vs baseline, with the medians marked."""
    figure = _figure(7, 4.2)
    axis = figure.subplots()
    served = (report.get("serving") or {}).get(str(bench["batch"])) or {}  # precision = "auto": per batch size
    series = [(f"final ({served.get('precision') or report.get('precision')}, "
               f"{served.get('model_file') or report.get('model_file')})", bench, "tab:blue")]
    label = bench.get("baseline", {}).get("label") or (report.get("baseline") or {}).get("label")  # this batch's
    if bench.get("baseline"):
        series.append((label or "unpruned FP32 baseline", bench["baseline"], "tab:gray"))
    if bench.get("baseline_fp32"):
        strict = bench["baseline_fp32"].get("label") or (report.get("baseline_fp32") or {}).get("label") or \
            "unpruned strict FP32"
        series.append((strict, bench["baseline_fp32"], "tab:red"))
    for label, data, color in series:
        samples = np.sort(np.asarray(data.get("samples_ms") or [], dtype=float))
        if not samples.size:
            continue
        fraction = np.arange(1, samples.size + 1) / samples.size
        median = data["latency_ms"]["median"]
        axis.step(samples, fraction, where="post", color=color, label=f"{label}: p50 {median:.3f} ms")
        axis.axvline(median, color=color, linestyle=":", linewidth=1)
    speedup = f" — {bench['speedup']:.2f}× vs {label or 'the baseline'}" if bench.get("speedup") else ""
    axis.set_title(f"{report.get('model')} on {report.get('device', 'device')} "
                   f"({served.get('backend') or report.get('backend')}), "
                   f"batch {bench['batch']}{speedup}", fontsize=10)
    axis.set_xlabel("latency per batch (ms)")
    axis.set_ylabel("fraction of iterations ≤ x")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def stages_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Held-out top-1 vs host ONNX Runtime latency (batch 1 and the largest measured) for every stage."""
    stages = [s for s in report.get("host", {}).get("stages", []) if s.get("latency_ms") and s.get("top1") is not None]
    if not stages:
        return None
    from matplotlib.ticker import ScalarFormatter

    batches = sorted({int(b) for s in stages for b in s["latency_ms"]})
    figure = _figure(6 * len(batches), 4.5)
    axes = figure.subplots(1, len(batches), squeeze=False)
    for axis, batch in zip(axes[0], batches):
        for index, stage in enumerate(stages):
            latency = {int(k): v for k, v in stage["latency_ms"].items()}.get(batch)
            if latency is None:
                continue
            axis.scatter(latency, stage["top1"] * 100, s=40, color=f"C{index}", label=stage["stage"], zorder=3)
            axis.annotate(f"{latency:.2f} ms", (latency, stage["top1"] * 100), textcoords="offset points",
                          xytext=(6, 4), fontsize=7, color=f"C{index}")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(ScalarFormatter())
        axis.tick_params(axis="x", which="minor", labelsize=7)
        axis.set_xlabel(f"host latency, batch {batch} (ms, log scale)")
        axis.set_ylabel("held-out top-1 (%)")
        axis.set_title(f"accuracy vs latency per stage, batch {batch}", fontsize=10)
        axis.grid(alpha=0.3, which="both")
    axes[0][-1].legend(loc="best", fontsize=8)
    figure.suptitle(f"{report.get('model')}: host pipeline stages (ONNX Runtime on the host)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """Every plot this report supports, as PNG files in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if report.get("status") == "done":
        for bench in report.get("benchmarks", []):
            if bench.get("samples_ms") or bench.get("baseline"):
                written.append(latency_plot(report, bench, directory / f"latency-b{bench['batch']}.png"))
    stages = stages_plot(report, directory / "stages.png")
    if stages is not None:
        written.append(stages)
    return written
