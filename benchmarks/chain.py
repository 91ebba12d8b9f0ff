"""The whole chain against FP32 and against the peers a user would otherwise script, in one run.

    python benchmarks/chain.py [--epochs 6] [--finetune 8] [--models resnet20:4,mobilenetv2:1] [--rounds 9]

For each model, trained on the digits data set (real images; checkpoints cached in results/.work):

- FP32: the trained model as exported by hand (``model.baseline.onnx``);
- edgekit: ``optimize`` with prune 50% + fine-tuning (cross-entropy, the product's default: with
  ``distill = true`` MobileNetV2 ended 0.8 point lower here, 98.06% against 98.89%), BN folding, INT8 —
  the file the local device runs (``model.int8.cpu.onnx``);
- peer: torch-pruning's own ``MagnitudePruner`` with its defaults (ratio 0.5, L2, no rounding, the
  classifier ignored), the same fine-tuning epochs, ``torch.onnx.export``, then ONNX Runtime's
  ``quantize_static`` with its defaults (QDQ, int8 activations and weights, per-tensor, MinMax) on the
  same calibration images.

Latency: ONNX Runtime on this CPU, every candidate interleaved round by round, medians; top-1 on the
360 held-out images. Targets (issue 11): ResNet-20 ×4 at batch 32 ≥ 8× faster than FP32 with ≤ 1 point
top-1 loss, MobileNetV2 ≥ 4×, both ahead of the peer at equal or better accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import RESULTS, digits, report, side_by_side, trained

from edgekit.device.manifest import MODEL_BASELINE, MODEL_INT8_CPU
from edgekit.host.checkpoint import save_checkpoint
from edgekit.host.config import load_config
from edgekit.host.data import Dataset, channel_stats, normalize
from edgekit.host.export import export_onnx, onnx_top1
from edgekit.host.pipeline import optimize

PROJECT = """\
[project]
name = "{name}"
[model]
arch = "{arch}"
width = {width}
checkpoint = "model.pt"
[data]
path = "{data}"
[train]
augment = ["crop"]
[prune]
enabled = true
ratio = 0.5
cost_weight = {cost_weight}
round_to = 16
finetune_epochs = {finetune}
early_stop = false
[quantize]
images = 512
"""


def edgekit_chain(project: Path, arch: str, width: float, finetune: int, data_dir: Path, cost_weight: float):
    (project / "deploy.toml").write_text(PROJECT.format(name=f"{arch}-w{width:g}", arch=arch, width=width,
                                                        data=data_dir, finetune=finetune, cost_weight=cost_weight))
    start = time.perf_counter()
    result = optimize(load_config(project / "deploy.toml"), say=print)
    return result, time.perf_counter() - start


class _Reader:
    """ONNX Runtime's CalibrationDataReader over preprocessed images (what its docs show users to write)."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([{name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def peer_chain(model, data: Dataset, mean, std, finetune: int, out: Path) -> tuple[Path, float]:
    """torch-pruning's MagnitudePruner with its defaults + the same fine-tuning + quantize_static defaults."""
    import copy

    import torch
    import torch_pruning as tp
    from onnxruntime.quantization import quantize_static

    from edgekit.host.train import train

    start = time.perf_counter()
    net = copy.deepcopy(model).train()
    example = torch.zeros(1, 3, 32, 32)
    classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]  # as torch-pruning's examples do
    pruner = tp.pruner.MagnitudePruner(net, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[classifier])
    pruner.step()
    train(net, data.train, mean, std, epochs=finetune, batch_size=64, lr=0.01, augment=("crop",), seed=1)
    fp32 = out / "peer.fp32.onnx"
    export_onnx(net.eval(), fp32, [3, 32, 32])
    pick = np.random.default_rng(0).permutation(len(data.train))[:512]
    images = normalize(data.train.images[np.sort(pick)], mean, std)
    int8 = out / "peer.int8.onnx"
    quantize_static(str(fp32), str(int8), _Reader("input", images))
    return int8, time.perf_counter() - start


def run(arch: str, width: float, epochs: int, finetune: int, rounds: int, work: Path, cost_weight: float) -> dict:
    data = digits(work)
    model, mean, std = trained(work, arch, width, epochs, data)
    project = work / f"chain-{arch}-w{width:g}"  # kept: its stage cache makes a re-run measure, not prune again
    project.mkdir(exist_ok=True)
    save_checkpoint(project / "model.pt", model, {"arch": arch, "width": width})
    result, edgekit_s = edgekit_chain(project, arch, width, finetune, work / "digits", cost_weight)
    peer, peer_s = peer_chain(model, data, mean, std, finetune, project)
    files = {"FP32": result.files[MODEL_BASELINE], "edgekit": result.files[MODEL_INT8_CPU], "peer": peer}
    test = normalize(data.test.images, *channel_stats(data.train))
    top1 = {name: onnx_top1(path, test, data.test.labels) for name, path in files.items()}
    latency = {batch: side_by_side(files, batch, rounds=rounds) for batch in (1, 32)}
    speedup = {name: {b: latency[b]["FP32"]["median"] / latency[b][name]["median"] for b in (1, 32)}
               for name in files}
    return {"model": f"{arch} ×{width:g}", "top1": top1, "latency_ms": latency, "speedup": speedup,
            "host_seconds": {"edgekit": edgekit_s, "peer": peer_s}, "stages": result.stages,
            "calibration": result.host.get("calibration"), "pruning": result.host.get("pruning")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the FP32 model (cached)")
    parser.add_argument("--finetune", type=int, default=8, help="fine-tuning epochs after pruning (both chains)")
    parser.add_argument("--models", default="resnet20:4,mobilenetv2:1")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved latency rounds")
    parser.add_argument("--cost-weight", type=float, default=0.2, help="prune.cost_weight of the edgekit chain")
    parser.add_argument("--name", default="chain", help="results/<name>.json")
    args = parser.parse_args()
    work = RESULTS / ".work"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for item in args.models.split(","):
        arch, width = item.split(":")
        results.append(run(arch, float(width), args.epochs, args.finetune, args.rounds, work, args.cost_weight))
    rows, checks = [], {}
    for r in results:
        for name in ("FP32", "edgekit", "peer"):
            lat = r["latency_ms"]
            rows.append([r["model"], {"FP32": "FP32 (as trained)", "edgekit": "edgekit: prune+fold+INT8",
                                      "peer": "torch-pruning + quantize_static"}[name],
                         f"{r['top1'][name]:.2%}", f"{lat[1][name]['median']:.3f}", f"{lat[32][name]['median']:.2f}",
                         f"{r['speedup'][name][1]:.2f}×", f"{r['speedup'][name][32]:.2f}×"])
        target = 8.0 if r["model"].startswith("resnet20") else 4.0
        loss = r["top1"]["FP32"] - r["top1"]["edgekit"]
        checks[r["model"]] = {
            f"b32_at_least_{target:g}x": r["speedup"]["edgekit"][32] >= target,
            "top1_loss_at_most_1_point": loss <= 0.01,
            "ahead_of_peer_b32": r["speedup"]["edgekit"][32] > r["speedup"]["peer"][32],
            "accuracy_at_least_peer": r["top1"]["edgekit"] >= r["top1"]["peer"],
        }
    report(args.name, "the whole chain vs FP32 and vs torch-pruning + quantize_static (ONNX Runtime on this CPU, "
           f"{args.rounds} interleaved rounds, medians)",
           ["model", "candidate", "top-1", "b1 p50 ms", "b32 p50 ms", "b1 speed-up", "b32 speed-up"], rows,
           {"args": vars(args), "results": results, "targets_met": checks})
    for model, model_checks in checks.items():
        for check, ok in model_checks.items():
            print(f"{'PASS' if ok else 'MISS'}  {model}: {check}")


if __name__ == "__main__":
    main()
