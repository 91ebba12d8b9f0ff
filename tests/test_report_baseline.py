"""Baseline vs final: interleaved benchmark rounds, the report's speed-up columns, compare, plots, ISA choice."""

from __future__ import annotations

import itertools
import json

import pytest

from edgekit.device.benchmark import Plan, interleaved, merge_rounds
from edgekit.device.contract.manifest import MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2
from edgekit.device.contract.model_files import model_file
from edgekit.device.cpu import describe_cpu, summarize_isa

from .conftest import run_cli


def fake_engine(name: str, latency: float, calls: list[str]):
    def run(plan: Plan) -> dict:
        calls.append(name)
        samples = [latency] * max(plan.min_iterations, 3)
        return {"batch": 8, "iterations": len(samples), "wall_s": latency * len(samples) / 1000,
                "latency_ms": {"median": latency, "cv_percent": 0.0}, "samples_ms": samples}
    return run


def test_rounds_alternate_abba_and_merge_every_iteration():
    calls: list[str] = []
    measured = interleaved({"final": fake_engine("final", 1.0, calls), "baseline": fake_engine("baseline", 4.0, calls)},
                           Plan(warmup_s=0, duration_s=0.4, min_iterations=8), rounds=4)
    assert calls == ["final", "baseline", "baseline", "final", "final", "baseline", "baseline", "final"]
    assert measured["final"]["rounds"] == 4 and measured["final"]["iterations"] == 4 * 3
    assert measured["baseline"]["latency_ms"]["median"] == 4.0 and measured["final"]["latency_ms"]["median"] == 1.0


def test_a_backend_without_raw_samples_is_summarised_by_its_median_round():
    rounds = [{"batch": 1, "latency_ms": {"median": m}} for m in (3.0, 1.0, 2.0)]
    assert merge_rounds(rounds, Plan())["latency_ms"]["median"] == 2.0


def int8_file(flags: list[str], machine: str = "x86_64", shipped: tuple = (MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2),
              backend: str = "onnxruntime") -> str:
    return model_file(backend, "int8", cpu=summarize_isa(machine, flags), shipped=shipped)


def test_int8_on_an_avx2_cpu_without_vnni_takes_the_7_bit_model():
    assert int8_file(["sse4_2", "avx2", "fma"]) == MODEL_INT8_CPU_AVX2
    assert int8_file(["sse4_2", "avx2", "fma"], backend="openvino") == MODEL_INT8_CPU_AVX2
    assert int8_file(["avx2", "avx512f", "avx512_vnni"]) == MODEL_INT8_CPU
    assert int8_file(["avx2", "avx_vnni"]) == MODEL_INT8_CPU
    assert int8_file(["asimd", "asimddp"], machine="aarch64") == MODEL_INT8_CPU  # ARM
    assert model_file("onnxruntime", "int8", shipped=[MODEL_INT8_CPU_AVX2]) == MODEL_INT8_CPU_AVX2  # unknown CPU
    assert int8_file(["avx2"], shipped=(MODEL_INT8_CPU,)) == MODEL_INT8_CPU  # an older bundle


def report_with_baseline(job: str = "j1", final: float = 1.0, base: float = 8.0) -> dict:
    samples = list(itertools.islice(itertools.cycle([final * 0.9, final, final * 1.2]), 60))
    base_samples = [s * base / final for s in samples]
    bench = {"batch": 32, "iterations": 60, "images_per_s": 32000 / final,
             "latency_ms": {"median": final, "p90": final * 1.2, "p99": final * 1.2, "cv_percent": 5.0},
             "samples_ms": samples, "speedup": base / final,
             "baseline": {"latency_ms": {"median": base}, "samples_ms": base_samples, "images_per_s": 32000 / base}}
    return {"job": job, "status": "done", "model": "tiny", "backend": "onnxruntime", "precision": "int8",
            "model_file": MODEL_INT8_CPU, "model_size_bytes": 1000, "benchmarks": [bench],
            "validation": {"passed": True, "top1_agreement": 0.99, "cosine_min": 0.999},
            "baseline": {"model_file": "model.baseline.onnx"},
            "host": {"accuracy_by_file": {MODEL_INT8_CPU: 0.95, "model.baseline.onnx": 0.955},
                     "stages": [{"stage": "trained (FP32 baseline)", "top1": 0.955,
                                 "latency_ms": {"1": 1.0, "32": 8.0}},
                                {"stage": "pruned", "top1": 0.95},
                                {"stage": "ONNX INT8 CPU (U8S8)", "top1": 0.95, "latency_ms": {"1": 0.2, "32": 1.0}}]}}


def test_latency_rows_carry_baseline_speedup_and_both_accuracies():
    from edgekit.host.records.report import latency_rows, summary_lines

    row = latency_rows(report_with_baseline(), "local")[0]
    assert row["baseline_p50_ms"] == 8.0 and row["speedup"] == 8.0
    assert row["host_top1"] == 0.95 and row["baseline_top1"] == 0.955
    lines = summary_lines(report_with_baseline())
    assert "passed" in lines[0] and "8.00× at batch 32" in lines[1] and "95.50% → 95.00% (-0.50 pt)" in lines[1]
    assert "on onnxruntime vs unpruned FP32 on onnxruntime" in lines[1]  # a report from before the default baseline


def test_report_names_the_runtime_both_models_ran_on_and_the_cpus_int8_isa():
    """With auto the baseline runs on the winner: the summary says which; rich must not eat the [ISA] list."""
    from rich.console import Console

    from edgekit.host.records.report import print_report, summary_lines

    report = report_with_baseline()
    report.update(backend="openvino", baseline={"model_file": "model.baseline.onnx", "backend": "openvino"},
                  backend_describe={"version": "2026.4.1", "cpu": "AMD EPYC",
                                    "isa": summarize_isa("x86_64", ["avx2", "avx512_vnni"])})
    assert "vs unpruned FP32 on openvino (the unpruned model as a user would run it there): 8.00× at batch 32" \
        in summary_lines(report)[1]
    console = Console(record=True, width=300)
    print_report(console, report, "local")
    assert "backend: openvino 2026.4.1 on AMD EPYC [avx512_vnni]" in console.export_text()


def report_with_default_baseline(job: str = "j1", final: float = 1.0) -> dict:
    """A report of this agent: the baseline at OpenVINO's default (bf16), strict FP32 on the final's runtime."""
    report = report_with_baseline(job, final, base=4.0)
    bench = report["benchmarks"][0]
    bench.update(speedup_fp32=20.0 / final, baseline_fp32={"latency_ms": {"median": 20.0}, "samples_ms": [20.0] * 5})
    report.update(backend="openvino", precision="fp16", executed_precision="bf16", precision_requested="auto",
                  baseline={"model_file": "model.baseline.onnx", "backend": "openvino", "precision": "fp16",
                            "executed_precision": "bf16", "label": "unpruned bf16 on openvino"},
                  baseline_fp32={"model_file": "model.baseline.onnx", "backend": "openvino", "precision": "fp32",
                                 "label": "unpruned strict FP32 on openvino"})
    return report


def test_the_headline_names_the_default_precision_baseline_and_keeps_strict_fp32_second(tmp_path):
    from rich.console import Console

    from edgekit.host.records.plots import write_plots
    from edgekit.host.records.report import compare_rows, compare_table, latency_rows, print_report, summary_lines

    report = report_with_default_baseline()
    row = latency_rows(report, "local")[0]
    assert row["speedup"] == 4.0 and row["speedup_fp32"] == 20.0 and row["baseline"] == "unpruned bf16 on openvino"
    assert row["precision_shown"] == "fp16 (bf16) (auto)"
    lines = summary_lines(report)
    assert "final fp16 (bf16) (auto) model on openvino vs unpruned bf16 on openvino" in lines[1]
    assert "4.00× at batch 32" in lines[1] and lines[2] == "vs unpruned strict FP32 on openvino: 20.00× at batch 32"
    console = Console(record=True, width=300)
    print_report(console, report, "local")
    shown = console.export_text()
    assert "vs strict FP32" in shown and "20.00×" in shown and "4.00×" in shown
    rows = compare_rows(report_with_baseline("a", 2.0), report_with_default_baseline("b", 1.0))
    assert rows[0]["old_baseline"] == "unpruned FP32 on onnxruntime"  # recorded before: named as what it was
    assert rows[0]["new_baseline"] == "unpruned bf16 on openvino" and rows[0]["new_vs_fp32"] == 20.0
    console = Console(record=True, width=300)
    console.print(compare_table("a", "b", rows))
    assert "new vs unpruned bf16 on openvino" in console.export_text()
    assert len(write_plots(dict(report, device="local"), tmp_path)) == 2


def test_a_job_still_in_flight_reads_as_published_not_failed(tmp_path):
    """The history row written at publish: `report` shows it in flight; `compare` skips it for finished runs."""
    from edgekit.host.records.history import History
    from edgekit.host.ship.push import published_stub

    from .conftest import TINY_PROJECT

    (tmp_path / "deploy.toml").write_text(TINY_PROJECT)
    history = History(tmp_path / ".edgekit" / "history.db")
    for job in ("j1", "j2"):
        history.record("local", report_with_baseline(job))
    history.record("local", published_stub("j3", "local", "tiny"))
    shown = run_cli("report", cwd=tmp_path)
    assert shown.returncode == 0 and "published" in shown.stdout and "failed" not in shown.stdout, shown.stdout
    assert "j3" in shown.stdout  # the message says how to follow it
    compared = run_cli("compare", "--json", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert (json.loads(compared.stdout)["old"], json.loads(compared.stdout)["new"]) == ("j1", "j2")
    history.record("local", dict(report_with_baseline("j3"), status="failed", error="boom"))
    assert "failed" in run_cli("report", cwd=tmp_path).stdout


def test_compare_shows_each_runs_baseline_speedup():
    from edgekit.host.records.report import compare_rows

    rows = compare_rows(report_with_baseline("a", 2.0), report_with_baseline("b", 1.0))
    assert rows[0]["speedup"] == 2.0 and rows[0]["old_vs_baseline"] == 4.0 and rows[0]["new_vs_baseline"] == 8.0


def test_plots_are_written_as_png_files(tmp_path):
    from edgekit.host.records.plots import write_plots

    paths = write_plots(dict(report_with_baseline(), device="local"), tmp_path)
    assert sorted(p.name for p in paths) == ["latency-b32.png", "stages.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.slow
def test_push_int8_reports_speedup_over_the_baseline_with_plots_and_compare(project):
    """What `make demo` shows, on the tiny project: pruned + folded + INT8 on `local`, baseline beside it."""
    deploy = project / "deploy.toml"
    deploy.write_text(deploy.read_text() + '\n[prune]\nenabled = true\nround_to = 4\nfinetune_epochs = 1\n'
                      'allow_accuracy_drop = true\n'
                      '\n[devices.local]\nkind = "local"\nprecision = "int8"\n')
    first = run_cli("push", "local", cwd=project)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert out.index("host pipeline") < out.index("edgekit latency report")
    for stage in ("load", "prune", "fold", "export", "calibrate", "evaluate"):
        assert f" {stage} " in out
    assert "baseline p50 ms" in out and "speed-up" in out and "vs strict FP32" in out and " vs unpruned " in out
    plots = sorted((project / ".edgekit" / "runs").glob("*/*.png"))
    assert {p.name for p in plots} == {"latency-b1.png", "latency-b8.png", "stages.png"}
    assert "plots:" in out and str(plots[0]) in out.replace("\n", "")
    first_backend = json.loads(run_cli("report", "--json", cwd=project).stdout)["backend"]

    second = run_cli("push", "local", "--json", cwd=project)
    data = json.loads(second.stdout)
    report = data["report"]
    assert data["optimize"]["cached"] and report["model_file"] == model_for_here()
    assert all(b["speedup"] > 0 and b["speedup_fp32"] > 0 for b in report["benchmarks"])
    # the baseline is built on every runtime here at its default precision, the fastest kept: all built on the
    # first push; strict FP32 runs on the final's runtime (auto's race may pick the other one on this push)
    assert report["baseline"]["engine_reused"] and report["baseline"]["label"].startswith("unpruned ")
    assert report["baseline_fp32"]["engine_reused"] or report["backend"] != first_backend
    assert all(len(b["baseline"]["samples_ms"]) >= 2 for b in report["benchmarks"])
    compared = json.loads(run_cli("compare", "--json", cwd=project).stdout)["rows"]
    assert [r["batch"] for r in compared] == [1, 8] and all(r["new_vs_baseline"] for r in compared)
    replot = run_cli("report", "--plot", cwd=project)
    assert replot.returncode == 0 and "plots:" in replot.stdout and "speed-up" in replot.stdout

    deploy.write_text(deploy.read_text().replace("min_iterations = 5", "min_iterations = 5\nbaseline = false"))
    off = json.loads(run_cli("push", "local", "--json", cwd=project).stdout)
    assert off["optimize"]["cached"] and off["report"]["baseline"] is None
    assert all("speedup" not in b for b in off["report"]["benchmarks"])


def model_for_here() -> str:
    return model_file("onnxruntime", "int8", cpu=describe_cpu())
