"""CPU runtimes side by side: ONNX Runtime vs OpenVINO on FP32 and both INT8 files, as the agent runs them.

    python benchmarks/cpu_backends.py [--models resnet20x4,mobilenetv2] [--rounds 7] [--round-s 0.4] [--epochs 3]
                                      [--project DIR]

Models: ResNet-20 at ×4 width and MobileNetV2, trained on the digits (real images), BN-folded, exported
and calibrated with edgekit's own helpers (percentile), giving model.onnx, model.int8.cpu.onnx (U8S8),
model.int8.cpu.avx2.onnx (U8S8, 7-bit weights: what x86 without VNNI gets) and model.int8.qdq.onnx (S8S8).
``--project DIR`` adds the files ``edgekit optimize`` made for that project (cached: run ``make demo`` first
and pass the repository root to measure the demo's pruned ResNet-20 ×2, i.e. what the `local` device runs;
validated against its own reference.npz). Each (model file, runtime) is built by the agent's backend classes and
runs in its own worker process, so one runtime's idle threads cannot slow another; the workers take
turns round by round (interleaved), and the figure is the median of the per-round medians. Threads:
all cores for every runtime (the agent's default).

Also printed: each engine's validation verdict (the agent's rule, against the FP32 host outputs) and
which file ``model_files`` gives each runtime on this CPU. Target (issue 15): the local device's INT8
latency at batch 32 (the faster runtime on that file, which ``auto`` would pick) ≥ 1.3× faster than
ONNX Runtime's on the same file at the same validation result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, EngineWorkers, digits, report, trained

from edgekit.calibration.collect import collect, make_table
from edgekit.calibration.cpu import write_cpu_int8
from edgekit.calibration.trt_qdq import write_trt_qdq
from edgekit.device.contract.manifest import MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ, REFERENCE
from edgekit.device.contract.model_files import model_file
from edgekit.device.contract.validate import compare
from edgekit.device.cpu import describe_cpu
from edgekit.host.optimize.export.onnx_export import export_onnx
from edgekit.host.optimize.fold.batchnorm import fold_batchnorm
from edgekit.host.train.data import normalize

MODELS = {"resnet20x4": ("resnet20", 4.0), "mobilenetv2": ("mobilenetv2", 1.0)}
FILES = (MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ)
RUNTIMES = ("onnxruntime", "openvino")
REFERENCE_IMAGES = 128


def make_models(name: str, work: Path, epochs: int) -> tuple[dict[str, Path], np.ndarray, np.ndarray, np.ndarray]:
    """Train (cached), fold, export and calibrate once; returns the folder and held-out inputs/logits/labels."""
    from edgekit.host.optimize.export.onnx_export import onnx_predict

    arch, width = MODELS[name]
    data = digits(work)
    model, mean, std = trained(work, arch, width, epochs, data)
    out = work / f"{name}-e{epochs}"
    out.mkdir(exist_ok=True)
    if not all((out / file).exists() for file in FILES):
        folded, _ = fold_batchnorm(model)
        export_onnx(folded, out / MODEL_FP32, [3, 32, 32])
        pick = np.random.default_rng(0).permutation(len(data.train))[:512]
        images = normalize(data.train.images[np.sort(pick)], mean, std)
        collected = collect(out / MODEL_FP32, (images[i:i + 32] for i in range(0, len(images), 32)))
        table = make_table(collected, "percentile", 99.99)
        write_trt_qdq(out / MODEL_FP32, table, out / MODEL_INT8_QDQ)
        write_cpu_int8(out / MODEL_FP32, table, out / MODEL_INT8_CPU)
        write_cpu_int8(out / MODEL_FP32, table, out / MODEL_INT8_CPU_AVX2, reduce_range=True)
    inputs = normalize(data.test.images[:REFERENCE_IMAGES], mean, std)
    files = {file: out / file for file in FILES}
    return files, inputs, onnx_predict(out / MODEL_FP32, inputs), data.test.labels[:REFERENCE_IMAGES]


def project_name(root: Path) -> str:
    from edgekit.host.config import load_config

    return load_config(root / "deploy.toml").project.name


def project_models(root: Path) -> tuple[dict[str, Path], np.ndarray, np.ndarray, np.ndarray]:
    """A project's own files (its stage cache; optimised now if it is not there) and its reference.npz."""
    from edgekit.host.config import load_config
    from edgekit.host.optimize import optimize

    optimized = optimize(load_config(root / "deploy.toml"), say=lambda message: None)
    files = {file: optimized.files[file] for file in FILES}
    reference = np.load(optimized.files[REFERENCE])
    return files, reference["inputs"], reference[f"outputs.{MODEL_FP32}"], reference["labels"]


def versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20x4,mobilenetv2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-s", type=float, default=0.4)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (latency does not depend on them)")
    parser.add_argument("--project", type=Path, help="also measure this edgekit project's optimised files "
                        "(e.g. the repository root after `make demo`)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    work = RESULTS / ".work"
    work.mkdir(parents=True, exist_ok=True)
    cpu = describe_cpu()
    results: dict[str, Any] = {"cpu": cpu, "rounds": args.rounds, "round_s": args.round_s, "models": {},
                               "command": " ".join(["python", *sys.argv]), "versions": versions(),
                               "load_average": {"start": os.getloadavg()}}
    rows = []
    sources = [(name, lambda n=name: make_models(n, work, args.epochs)) for name in args.models.split(",") if name]
    if args.project:
        sources.append((project_name(args.project), lambda: project_models(args.project)))
    for name, make in sources:
        files, inputs, reference, labels = make()
        engines = {(file, runtime): (runtime, files[file]) for file in FILES for runtime in RUNTIMES}
        with EngineWorkers(engines, batches) as workers:
            verdicts = {key: compare(reference, workers.outputs(key, inputs), labels,
                                     "fp32" if key[0] == MODEL_FP32 else "int8", {}) for key in engines}
            medians = workers.rounds(args.rounds, args.round_s)
        base = {b: statistics.median(medians[(MODEL_FP32, "onnxruntime")][b]) for b in batches}
        model_result = {}
        for (file, runtime), per_batch in medians.items():
            latency = {b: statistics.median(v) for b, v in per_batch.items()}
            verdict = verdicts[(file, runtime)]
            picked = model_file(runtime, "fp32" if file == MODEL_FP32 else "int8", cpu=cpu) == file
            model_result[f"{file} on {runtime}"] = {
                "file": file, "runtime": runtime, "median_ms": latency, "round_medians_ms": per_batch,
                "speedup_vs_ort_fp32": {b: base[b] / latency[b] for b in batches}, "chosen_for_this_cpu": picked,
                "validation": {k: verdict[k] for k in ("passed", "top1_agreement", "cosine_min", "reason")}}
            rows.append([name, file, runtime, "yes" if picked else "-"]
                        + [round(latency[b], 3) for b in batches] + [f"{base[batches[-1]] / latency[batches[-1]]:.2f}×",
                           f"{'passed' if verdict['passed'] else 'FAILED'} ({verdict['top1_agreement']:.1%}, "
                           f"cos {verdict['cosine_min']:.4f})"])
        int8 = model_file("onnxruntime", "int8", cpu=cpu)
        ort_ms = model_result[f"{int8} on onnxruntime"]["median_ms"][batches[-1]]
        ov_ms = model_result[f"{int8} on openvino"]["median_ms"][batches[-1]]
        model_result["target"] = {
            "file": int8, "batch": batches[-1], "onnxruntime_ms": ort_ms, "openvino_ms": ov_ms,
            "auto_would_pick": "openvino" if ov_ms < ort_ms else "onnxruntime",
            "speedup_vs_onnxruntime": ort_ms / min(ort_ms, ov_ms),
            "same_validation": model_result[f"{int8} on onnxruntime"]["validation"]["passed"]
            == model_result[f"{int8} on openvino"]["validation"]["passed"]}
        results["models"][name] = model_result
    results["load_average"]["end"] = os.getloadavg()
    title = (f"CPU runtimes, median of {args.rounds} interleaved rounds (ms), {cpu['model']}, "
             f"ISA {' '.join(cpu['isa'])}, load average {results['load_average']['start'][0]:.1f} → "
             f"{results['load_average']['end'][0]:.1f}")
    columns = ["model", "file", "runtime", "model_files picks"] + [f"b{b} ms" for b in batches] + [
        f"b{batches[-1]} vs ORT FP32", "validation (top-1 agreement, worst cosine)"]
    report("cpu_backends", title, columns, rows, results)
    for name, result in results["models"].items():
        target = result["target"]
        print(f"{name}: INT8 ({target['file']}) at batch {target['batch']}: {target['auto_would_pick']} "
              f"{target['speedup_vs_onnxruntime']:.2f}× ONNX Runtime ({target['openvino_ms']:.2f} vs "
              f"{target['onnxruntime_ms']:.2f} ms); target ≥ 1.3×: "
              f"{'met' if target['speedup_vs_onnxruntime'] >= 1.3 else 'missed'}")


if __name__ == "__main__":
    main()
