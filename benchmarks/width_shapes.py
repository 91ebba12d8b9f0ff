"""Is any width allocation a point above uniform pruning at one latency target? A family of shapes, timed alike.

    python benchmarks/width_shapes.py --model mobilenetv2:1 [--batch 32] [--fraction 0.125] [--seeds 3]
                                      [--tilts -1.5,0,1.5] [--ratios 0.5,1,2] [--finetune 5] [--lr 0.05]
                                      [--train-images 2000] [--test-images 2000] [--name NAME] [--work DIR]

``latency_prune.py`` compares the product's choice with uniform widths; this asks the question before it: does
*any* allocation of the same time beat uniform widths, and which. On Fashion-MNIST (``make bench-data``: the
first 2,000 training and test images unless ``--train-images`` / ``--test-images`` say otherwise, the model
trained 8 epochs, as ``latency_prune.py --fashion --train-images 2000 --test-images 2000`` trains and caches it
in the same ``--work`` folder), at ``--fraction`` of the unpruned model's predicted latency on the local device
(ONNX Runtime fp32, the latency model as ``latency_prune.py`` measures it):

- each group's kept fraction is ``s × exp(tilt × (depth − ½)) × (ratio if the group is an expansion)``, largest
  1 (``latency.depth_shape``, the product's own): ``depth`` is the group's place in the network (0 first, 1
  last), ``tilt`` > 0 keeps late layers wider; an expansion is a group one full convolution writes at least as
  wide as it reads (a MobileNetV2 block's expanded channels, a ResNet block's inner conv, the head), the others
  are residual streams several layers add into and projections that narrow the signal; ``ratio`` < 1 prunes
  the expansions harder; the push's trial offers tilt 0 at ratio 0.5 ("lean inside"). ``s`` is set
  on the latency model, then corrected until the shape's file runs within 4 % of the uniform widths' file
  timed side by side (interleaved rounds, up to 4 tries, the closest kept);
- each is fine-tuned like ``latency_prune.py``'s arms (``--finetune`` epochs, ``--seeds`` seeds, mean top-1);
- then all of them are timed again in one interleaved run, as ratios to uniform.

tilt 0, ratio 1 is uniform pruning. A shape a point above it, at a ratio ≤ 1, is an allocation a search could
find; none at any shape says width allocation alone has nothing to give at this target on this device.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import FASHION, console, fashion, report, side_by_side, trained
from latency_prune import costs_of, finetuned_top1, head_of, measure_latency_model, onnx_of, pruned_copy

from edgekit.host.optimize.prune.latency import LatencyModel, depth_shape, scaled
from edgekit.host.optimize.prune.sensitivity import unmeasured
from edgekit.host.train.data import Dataset, channel_stats

CLOSE = 0.04  # a shape's file within this of the uniform file's time, side by side, counts as equally fast
TRIES = 4


def at_uniform_time(latency: LatencyModel, shape: dict[str, float], target: float, held: list[str], model: Any,
                    protect: list, uniform_onnx: Path, batch: int, work: Path) -> tuple[dict[str, int], float]:
    """The shape's widths whose file runs as fast as the uniform file, side by side (the closest of TRIES)."""
    goal, best = target, None
    for _ in range(TRIES):
        widths = scaled(latency, shape, goal, held=held).widths
        path = onnx_of(pruned_copy(model, protect, widths), work / "shape.onnx")
        both = side_by_side({"uniform": uniform_onnx, "shape": path}, batch, rounds=5, per_round=8)
        ratio = both["shape"]["median"] / both["uniform"]["median"]
        if best is None or abs(ratio - 1) < abs(best[1] - 1):
            best = (widths, ratio)
        if abs(ratio - 1) < CLOSE:
            break
        goal /= ratio
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2:1")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=0.125)
    parser.add_argument("--tilts", default="-1.5,0,1.5")
    parser.add_argument("--ratios", default="0.5,1,2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--finetune", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05, help="training learning rate (ResNet-20 ×4: 0.02)")
    parser.add_argument("--train-images", type=int, default=2000, help="train and fine-tune on this many images")
    parser.add_argument("--test-images", type=int, default=2000, help="judge on this many test images")
    parser.add_argument("--name", default="width_shapes")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-latency-prune")
    args = parser.parse_args()
    arch, width = args.model.split(":")
    full = fashion(FASHION)
    data = Dataset(head_of(full.train, args.train_images), head_of(full.test, args.test_images), full.classes)
    mean, std = channel_stats(data.train)
    args.work.mkdir(parents=True, exist_ok=True)
    model, _, _ = trained(args.work, arch, float(width), args.epochs, data, lr=args.lr,
                          tag=f"-fashion{len(data.train)}")
    latency, _, protect, _, _ = measure_latency_model(args.work, f"{arch}x{width}", model, args.batch)
    target = args.fraction * latency.predict(latency.full())  # the table's units: the machine changes speed
    held = unmeasured(costs_of(model, protect, latency, data, mean, std))
    uniform = scaled(latency, {name: 1.0 for name in latency.spaces}, target, held=held).widths
    uniform_onnx = onnx_of(pruned_copy(model, protect, uniform), args.work / "uniform.onnx")
    shapes: dict[str, dict[str, Any]] = {}
    for tilt in [float(t) for t in args.tilts.split(",")]:
        for ratio in [float(r) for r in args.ratios.split(",")]:
            key = f"tilt {tilt:+g}, ratio {ratio:g}"
            widths = uniform if (tilt, ratio) == (0.0, 1.0) else at_uniform_time(
                latency, depth_shape(latency, tilt, ratio), target, held, model, protect, uniform_onnx, args.batch,
                args.work)[0]
            if any(row["widths"] == widths for row in shapes.values()):
                continue  # at the floors two shapes can give the same widths
            net = pruned_copy(model, protect, widths)
            seeds = finetuned_top1(net, data, mean, std, args.finetune, 0, args.seeds)
            shapes[key] = {"widths": widths, "top1_seeds": seeds, "top1": float(np.mean(seeds)),
                           "weights": sum(p.numel() for p in net.parameters()),
                           "file": onnx_of(net, args.work / f"shape-{len(shapes)}.onnx")}
            console.print(f"{key}: top-1 {shapes[key]['top1']:.2%} ({', '.join(f'{s:.1%}' for s in seeds)})")
    timed = side_by_side({key: row["file"] for key, row in shapes.items()}, args.batch, rounds=7, per_round=10)
    base_ms, base_top1 = timed["tilt +0, ratio 1"]["median"], shapes["tilt +0, ratio 1"]["top1"]
    rows = [[key, timed[key]["median"], timed[key]["median"] / base_ms, row["weights"], f"{row['top1']:.2%}",
             f"{(row['top1'] - base_top1) * 100:+.1f}"] for key, row in shapes.items()]
    report(args.name, f"{arch}×{width} b{args.batch} at {args.fraction:g} of its latency: width shapes against "
           "uniform (tilt +0, ratio 1), Fashion-MNIST", ["shape", "ms", "× uniform", "weights", "top-1", "Δ pt"],
           rows, {"args": {k: str(v) for k, v in vars(args).items()}, "target_ms": target,
                  "shapes": {key: dict(row, file=None, ms=timed[key]["median"], ratio=timed[key]["median"] / base_ms)
                             for key, row in shapes.items()}})


if __name__ == "__main__":
    main()
