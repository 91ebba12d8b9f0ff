"""How many passes the trial needs: does its held-out loss rank widths as their full fine-tune does?

    python benchmarks/trial_passes.py --shapes width_shapes_mobilenetv2_b32_eighth [--passes 1,2,3]
                                      [--work DIR] [--name NAME]

The push's trial (``prune.trial``) fine-tunes each candidate briefly and keeps the lowest held-out loss. This
takes the widths of a ``width_shapes.py`` result (shapes at the same measured latency, each with its top-1
after the full fine-tune), runs the product's ``trial_loss`` on every one at each pass count (the push's set-up:
``latency_prune.trial_setup``), and reports the Spearman correlation of −loss with the final top-1 and the
shape the trial would keep. The model is the result's, cached in ``--work`` by ``width_shapes.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import FASHION, RESULTS, console, fashion, report, trained
from latency_prune import head_of, trial_setup
from scipy.stats import spearmanr

from edgekit.host.optimize.prune.trial import trial_loss
from edgekit.host.outputs import output_layers
from edgekit.host.train.data import Dataset, channel_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="a width_shapes.py result's name")
    parser.add_argument("--passes", default="1,2,3")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-latency-prune")
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    source = json.loads((RESULTS / f"{args.shapes}.json").read_text())
    arch, width = source["args"]["model"].split(":")
    full = fashion(FASHION)
    data = Dataset(head_of(full.train, 2000), head_of(full.test, 2000), full.classes)
    mean, std = channel_stats(data.train)
    model, _, _ = trained(args.work, arch, float(width), int(source["args"]["epochs"]), data,
                          lr=float(source["args"]["lr"]), tag="-fashion2000")
    setup = trial_setup(model, output_layers(model.eval(), torch.zeros(1, 3, 32, 32)), data, mean, std)
    shapes = source["shapes"]
    final = {key: row["top1"] for key, row in shapes.items()}
    best_final = max(final.values())
    rows, found = [], {}
    for passes in [int(p) for p in args.passes.split(",")]:
        losses = {key: trial_loss(setup, row["widths"], passes)[0] for key, row in shapes.items()}
        rho = float(spearmanr([-losses[k] for k in shapes], [final[k] for k in shapes]).correlation)
        kept = min(shapes, key=lambda k: losses[k])
        console.print(f"{passes} pass(es): " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
        rows.append([passes, f"{min(losses.values()):.3f}–{max(losses.values()):.3f}", f"{rho:.2f}", kept,
                     f"{(final[kept] - best_final) * 100:+.1f}"])
        found[passes] = {"losses": losses, "spearman": rho, "kept": kept}
    report(args.name or f"trial_passes_{args.shapes.removeprefix('width_shapes_')}",
           f"trial passes against the full fine-tune's ranking ({args.shapes}, {len(shapes)} shapes)",
           ["passes", "held-out loss", "Spearman vs top-1", "trial keeps", "its top-1 − best's, pt"], rows,
           {"shapes": args.shapes, "final_top1": final, "passes": found})


if __name__ == "__main__":
    main()
