"""How well a device's latency model predicts whole models (issue 24: within 20 % of measurement).

    python benchmarks/latency_model_error.py [--models mobilenetv2:1,resnet20:4] [--batch 1] [--name NAME]

For each model (untrained, seeded: widths, not weights, set the time): measure its latency model on the
built-in ``local`` device through the real path (a signed ``latency_model`` job, a real agent, ONNX Runtime
fp32), then predict and measure whole models at widths the model was not built from: uniform fractions between
the profiled levels, random per-group widths, and the greedy search's answers for ½ and ¼ of the unpruned
latency (no accuracy costs: the fastest widths the model knows). "measured" is the agent's own timing of the
pruned model, the closed loop's check (``measure_widths``), so prediction and measurement share one device.

Whole-model error is not all the search needs: it chooses *which* group to cut by what each cut saves. So each
group is also cut alone to half its width (the rest whole), and the saving predicted (full − that model) is
set beside the saving measured: a group whose saving is over-stated is one the search cuts too deep.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import torch
from common import report
from latency_prune import measure_latency_model, stop_agent

from edgekit.host.optimize.prune.latency import aligned, search_widths
from edgekit.host.train.models import create_model

UNIFORM = (0.9, 0.6, 0.45, 0.3, 0.15)  # between the profiled levels (1, ¾, ½, ¼, ⅛, floor)
RANDOM_CASES = 5


def cases(latency: object, unpruned_ms: float, seed: int = 0) -> dict[str, dict[str, int]]:
    """The widths to predict and measure, by name."""
    spaces = latency.spaces
    found = {f"uniform {f:g}": {k: aligned(s, f) for k, s in spaces.items()} for f in UNIFORM}
    rng = random.Random(seed)
    for index in range(RANDOM_CASES):
        found[f"random {index}"] = {k: aligned(s, rng.uniform(0.1, 1.0)) for k, s in spaces.items()}
    for fraction in (0.5, 0.25):
        found[f"search {fraction:g}"] = search_widths(latency, {}, fraction * unpruned_ms).widths
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2:1,resnet20:4")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--name", default="latency_model_error")
    parser.add_argument("--latency-model", default="profile", choices=("layers", "profile"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-latency-model-error")
    args = parser.parse_args()
    rows, results = [], []
    for spec in args.models.split(","):
        arch, width = spec.split(":")
        torch.manual_seed(0)
        model = create_model(arch, 10, float(width)).eval()
        work = args.work / f"{arch}x{width}-b{args.batch}"
        latency, out, _, cost, measure = measure_latency_model(work, f"{arch}x{width}", model, args.batch,
                                                               args.latency_model)
        errors = []
        full = latency.full()
        full_predicted, full_measured = latency.predict(full), measure(full)
        for name, widths in cases(latency, out["ms"]["whole:1.0"]).items():
            predicted, measured = latency.predict(widths), measure(widths)
            errors.append((predicted - measured) / measured)
            rows.append([f"{arch}×{width}", name, sum(widths.values()), predicted, measured, f"{errors[-1]:+.0%}", ""])
            results.append({"model": f"{arch}x{width}", "case": name, "channels": sum(widths.values()),
                            "predicted_ms": predicted, "measured_ms": measured, "error": errors[-1],
                            "widths": widths})
        for group, space in latency.spaces.items():  # one group at ½, the rest whole: the saving the search reads
            widths = dict(full, **{group: aligned(space, 0.5)})
            predicted, measured = latency.predict(widths), measure(widths)
            saving = (full_predicted - predicted, full_measured - measured)
            rows.append([f"{arch}×{width}", f"only {group} ½", sum(widths.values()), predicted, measured,
                         f"{(predicted - measured) / measured:+.0%}", f"{saving[0]:.3g} / {saving[1]:.3g}"])
            results.append({"model": f"{arch}x{width}", "case": f"only {group} at half", "predicted_ms": predicted,
                            "measured_ms": measured, "predicted_saving_ms": saving[0],
                            "measured_saving_ms": saving[1], "full_measured_ms": full_measured})
        rows.append([f"{arch}×{width}", "median |error|", "", "", "",
                     f"{statistics.median(abs(e) for e in errors):.0%} (max {max(abs(e) for e in errors):.0%})", ""])
        results.append({"model": f"{arch}x{width}", "mode": out.get("mode"), "latency_model": cost,
                        "wholes_ms": {k: v for k, v in out["ms"].items() if k.startswith("whole")}})
        stop_agent(work / "device")
    report(args.name, f"latency model vs the agent's measurement at batch {args.batch} (local, ONNX Runtime fp32)",
           ["model", "widths", "channels", "predicted ms", "measured ms", "error", "saving predicted / measured"], rows,
           {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})


if __name__ == "__main__":
    main()
