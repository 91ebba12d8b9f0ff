"""INT8 on the host: our calibration and CPU INT8 model against ONNX Runtime's quantize_static defaults.

    python benchmarks/int8.py [--width 4] [--epochs 6] [--images 512]

ResNet-20 at ×4 width on the digits data set (real images). Side by side in one run: FP32, our
model.int8.cpu.onnx, and `quantize_static` with its defaults on the same calibration images.
Targets (issue 5): our top-1 within 0.5 point of FP32; batch-32 latency ≥ 2.5× lower than FP32 and
no slower than ONNX Runtime's default; calibration plus writing every INT8 artefact no slower than one
`quantize_static` call.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import RESULTS, digits, report, side_by_side, timed, trained

from edgekit.calibration.collect import collect, make_table
from edgekit.calibration.cpu import write_cpu_int8
from edgekit.calibration.trt_qdq import write_trt_qdq
from edgekit.host.data import normalize
from edgekit.host.export import export_onnx, onnx_top1
from edgekit.host.fold import fold_batchnorm


def ours(fp32: Path, images: np.ndarray, out: Path, method: str) -> None:
    collected = collect(fp32, (images[i:i + 32] for i in range(0, len(images), 32)))
    table = make_table(collected, method)
    table.write(out / "calibration.json", out / "calibration.cache")
    write_trt_qdq(fp32, table, out / "model.int8.qdq.onnx")
    write_cpu_int8(fp32, table, out / "model.int8.cpu.onnx")


def ort_default(fp32: Path, images: np.ndarray, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": images[i:i + 32]} for i in range(0, len(images), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out / "ort_default.onnx"), Reader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5, help="alternating calibration timings (median)")
    parser.add_argument("--method", default="percentile", choices=["entropy", "percentile", "minmax", "mse"])
    args = parser.parse_args()
    work = RESULTS / ".work"
    work.mkdir(parents=True, exist_ok=True)
    data = digits(work)
    model, mean, std = trained(work, "resnet20", args.width, args.epochs, data)
    folded, _ = fold_batchnorm(model)
    pick = np.sort(np.random.default_rng(0).permutation(len(data.train))[:args.images])
    images = normalize(data.train.images[pick], mean, std)
    test = normalize(data.test.images, mean, std)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        fp32 = out / "model.onnx"
        export_onnx(folded, fp32, [3, 32, 32])
        ours_runs, ort_runs = [], []
        for _ in range(args.rounds):  # alternate, so machine noise hits both alike; compare medians
            ours_runs.append(timed(lambda: ours(fp32, images, out, args.method))[1])
            ort_runs.append(timed(lambda: ort_default(fp32, images, out))[1])
        ours_s, ort_s = statistics.median(ours_runs), statistics.median(ort_runs)
        models = {"FP32": fp32, "edgekit INT8 (U8S8)": out / "model.int8.cpu.onnx",
                  "ORT quantize_static default": out / "ort_default.onnx"}
        top = {name: onnx_top1(path, test, data.test.labels) for name, path in models.items()}
        top["edgekit INT8 Q/DQ (TensorRT form, run by ORT)"] = onnx_top1(out / "model.int8.qdq.onnx", test,
                                                                       data.test.labels)
        latency = {batch: side_by_side(models, batch) for batch in (1, 32)}
    fp32_b32 = latency[32]["FP32"]["median"]
    rows = []
    for name in top:
        b1 = latency[1].get(name, {}).get("median")
        b32 = latency[32].get(name, {}).get("median")
        rows.append([name, f"{top[name]:.2%}", f"{b1:.3f}" if b1 else "-", f"{b32:.3f}" if b32 else "-",
                     f"{fp32_b32 / b32:.2f}×" if b32 else "-"])
    rows.append([f"calibration + all INT8 artefacts (edgekit, median of {args.rounds})", "", "", "", f"{ours_s:.2f} s"])
    rows.append([f"one quantize_static call (ORT default, median of {args.rounds})", "", "", "", f"{ort_s:.2f} s"])
    ours_b32 = latency[32]["edgekit INT8 (U8S8)"]["median"]
    ort_b32 = latency[32]["ORT quantize_static default"]["median"]
    checks = {
        "top1_within_0.5_point": top["FP32"] - top["edgekit INT8 (U8S8)"] <= 0.005,
        "b32_speedup_vs_fp32_at_least_2.5": fp32_b32 / ours_b32 >= 2.5,
        "b32_no_slower_than_ort_default": ours_b32 <= ort_b32,
        "calibration_no_slower_than_quantize_static": ours_s <= ort_s,
    }
    report("int8", f"ResNet-20 ×{args.width:g} on digits ({len(test)} held-out images, {args.images} calibration)",
           ["model", "top-1", "b1 p50 ms", "b32 p50 ms", "b32 speed-up"], rows,
           {"args": vars(args), "top1": top, "latency_ms": latency, "calibrate_and_write_s": ours_s,
            "quantize_static_s": ort_s, "calibrate_runs_s": ours_runs,
            "quantize_static_runs_s": ort_runs, "speedup_b32_vs_fp32": fp32_b32 / ours_b32,
            "speedup_b32_vs_ort_default": ort_b32 / ours_b32, "targets_met": checks})
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")


if __name__ == "__main__":
    main()
