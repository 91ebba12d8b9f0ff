"""Can a loss without training tell the latency search's widths from uniform ones? (Why ``prune.trial`` exists.)

    python benchmarks/zero_shot_ranking.py --result latency_prune_resnet20x4_layers [--models resnet20:4]
                                           [--work /tmp/edgekit-latency-prune] [--lr 0.02]

For every row of a ``latency_prune.py`` result (same work folder: its trained checkpoint is reused), both arms'
widths are cut from the trained model in one shot and scored before any fine-tuning: the mean cross-entropy on
128 training images as cut, and again after BatchNorm statistics are recalibrated on 256 other training images
(EagleEye's adaptive BN), with that model's top-1 on the held-out images. Beside them, the top-1 each arm reached
after the benchmark's fine-tuning. Where every zero-shot score is at chance while the fine-tuned top-1 differ by
many points, no zero-shot proxy can choose between candidate widths: a short fine-tune has to.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, digits, report, trained
from latency_prune import hard_digits, pruned_copy

from edgekit.host.config import load_config
from edgekit.host.optimize.prune.sensitivity import SENSITIVITY_IMAGES, mean_loss
from edgekit.host.optimize.prune.structured import PruneSpec, prunable
from edgekit.host.train.data import channel_stats, normalize
from edgekit.host.train.loop import top1

RECALIBRATION_IMAGES = 256


def recalibrated(net: Any, images: torch.Tensor) -> Any:
    """BatchNorm running statistics recomputed (cumulative average) on ``images``; the weights untouched."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    net.train()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            net(images[start:start + 64])
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", required=True, help="a latency_prune.py result's name")
    parser.add_argument("--models", default="resnet20:4")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-latency-prune")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = hard_digits(digits(args.work))
    mean, std = channel_stats(data.train)
    arch, width = args.models.split(":")
    model, _, _ = trained(args.work, arch, float(width), args.epochs, data, lr=args.lr)
    config = load_config(args.work / f"project-{arch}x{width}-b1" / "deploy.toml")
    example = torch.zeros(1, 3, 32, 32)
    _, protect, _, _ = prunable(model.eval(), PruneSpec(**config.prune.model_dump()), example, example,
                                lambda _: None)
    images = torch.from_numpy(normalize(data.train.images[:SENSITIVITY_IMAGES + RECALIBRATION_IMAGES], mean, std))
    labels = torch.as_tensor(data.train.labels[:SENSITIVITY_IMAGES], dtype=torch.long)
    rows, results = [], []
    for row in json.loads((RESULTS / f"{args.result}.json").read_text())["results"]:
        scores = {}
        for arm in ("aware", "uniform"):
            net = pruned_copy(model, protect, row[f"{arm}_widths"]).eval()
            with torch.no_grad():
                as_cut = mean_loss(net, images[:SENSITIVITY_IMAGES], labels)
                recalibrated(net, images[SENSITIVITY_IMAGES:])
                after = mean_loss(net, images[:SENSITIVITY_IMAGES], labels)
            scores[arm] = {"loss_as_cut": as_cut, "loss_recalibrated": after,
                           "top1_recalibrated": top1(net, data.test, mean, std),
                           "top1_finetuned": row[f"{arm}_top1"]}
        results.append({"batch": row["batch"], "fraction": row["fraction"], **scores})
        a, u = scores["aware"], scores["uniform"]
        rows.append([row["batch"], f"{row['fraction']:g}", f"{a['loss_as_cut']:.3f} / {u['loss_as_cut']:.3f}",
                     f"{a['loss_recalibrated']:.3f} / {u['loss_recalibrated']:.3f}",
                     f"{a['top1_recalibrated']:.1%} / {u['top1_recalibrated']:.1%}",
                     f"{a['top1_finetuned']:.1%} / {u['top1_finetuned']:.1%}"])
    report(args.name or f"zero_shot_ranking_{args.result.removeprefix('latency_prune_')}",
           f"zero-shot scores of {args.result}'s widths, aware / uniform",
           ["batch", "target ×", "loss as cut", "loss, BN recalibrated", "top-1, BN recalibrated",
            "top-1 fine-tuned"], rows, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})


if __name__ == "__main__":
    main()
