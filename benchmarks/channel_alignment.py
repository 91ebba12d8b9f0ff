"""What a width between two multiples of the device's channel vector costs (``prune.align_to_device``).

    python benchmarks/channel_alignment.py --result latency_prune_resnet20x4_trial [--models resnet20:4]
                                           [--lr 0.02] [--work DIR] [--name NAME]

For every row of a ``latency_prune.py`` result, the latency-aware widths it recorded are built three ways
from the trained model of that run (cached in ``--work``): as recorded, each group rounded down to a
multiple of 16 and rounded up to one, BatchNorm folded as shipped. The three files are timed side by side at
the row's batch size (interleaved rounds, each served alone, as the agent serves one). On a CPU whose runtime
packs 16 channels (AVX-512), rounding up should cost nothing: the width was padded to it anyway.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import RESULTS, digits, report, side_by_side, trained
from latency_prune import hard_digits, onnx_of, pruned_copy

from edgekit.host.outputs import output_layers

VECTOR = 16  # AVX-512's 16 floats: ONNX Runtime's NCHWc block and oneDNN's nChw16c on this project's machine

ROUNDINGS = {"as recorded": lambda width: width,
             "down to 16s": lambda width: max(VECTOR, width // VECTOR * VECTOR),
             "up to 16s": lambda width: -(-width // VECTOR) * VECTOR}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", default="latency_prune_resnet20x4_trial")
    parser.add_argument("--models", default="resnet20:4")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-latency-prune")
    parser.add_argument("--name", default="channel_alignment_resnet20x4")
    args = parser.parse_args()
    arch, width = args.models.split(":")
    model = trained(args.work, arch, float(width), args.epochs, hard_digits(digits(args.work)), lr=args.lr)[0]
    protect = output_layers(model.eval(), torch.zeros(1, 3, 32, 32))
    rows, results = [], []
    for index, row in enumerate(json.loads((RESULTS / f"{args.result}.json").read_text())["results"]):
        files, channels = {}, {}
        for label, rounding in ROUNDINGS.items():
            widths = {group: rounding(kept) for group, kept in row["aware_widths"].items()}
            channels[label] = sum(widths.values())
            files[label] = onnx_of(pruned_copy(model, protect, widths), args.work / f"align-{index}-{label[:2]}.onnx")
        timed = side_by_side(files, row["batch"], rounds=5, per_round=8)
        ms = {label: timed[label]["median"] for label in files}
        rows.append([f"b{row['batch']} {row['fraction']:g}",
                     *[f"{ms[label]:.4g} ({channels[label]})" for label in ROUNDINGS],
                     f"{ms['up to 16s'] / ms['as recorded']:.2f}"])
        results.append({"batch": row["batch"], "fraction": row["fraction"], "median_ms": ms, "channels": channels})
    report(args.name, f"{args.result}: aware widths as recorded, rounded down and up to multiples of {VECTOR}",
           ["row", *[f"{label} ms (channels)" for label in ROUNDINGS], "up ÷ as recorded"], rows,
           {"source": args.result, "vector": VECTOR, "results": results})


if __name__ == "__main__":
    main()
