"""The layer table's monotone fit (``latency.monotone``): does it predict whole models better than the table as
measured? Offline: reads latency files a push wrote (``.edgekit/latency/*.json``), times nothing.

    python benchmarks/latency_table_fit.py FILE [FILE ...] [--rounds RESULT.json] [--name NAME]

For each file: how many layer variants the fit moved, and for every whole model measured on the device at
chosen widths (the file's checks, or with ``--rounds`` the check rounds a ``latency_prune.py`` result recorded
for the file's batch), the table's uncorrected prediction against that measurement, with the table as measured
and with the fit. Uncorrected: the checks themselves are what the closed loop corrects with, so a prediction
that already used them would be judged on its own answers. A check measured on another runtime than the
table's (a raced check, ``"race": true``) would measure the race, not the table: only files whose checks were
timed on the table's runtime belong here.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from common import report

from edgekit.host.optimize.prune.latency import LatencyModel, load_model_file, monotone


def batch_of(path: Path, saved: dict[str, Any]) -> int:
    """A push's file says its batch; ``latency_prune.py``'s work files say it in their name (``…-b32.json``)."""
    found = re.search(r"-b(\d+)$", path.stem)
    return int(saved.get("batch") or (found.group(1) if found else 1))


def checks_of(batch: int, saved: dict[str, Any], rounds: Path | None) -> list[tuple[dict[str, int], float]]:
    """The file's checks, or the result's rounds at its batch whose widths name its groups (another model's
    rounds are skipped)."""
    if rounds is None:
        return [(dict(c["widths"]), float(c["measured_ms"])) for c in saved.get("checks", [])]
    groups = {space["name"] for space in saved["spaces"]}
    rows = json.loads(rounds.read_text())["results"]
    return [(dict(r["widths"]), float(r["measured_ms"])) for row in rows if row["batch"] == batch
            for r in row.get("check_rounds", []) if set(r["widths"]) <= groups]


def row_of(path: Path, rounds: Path | None) -> dict[str, Any]:
    fitted, saved = load_model_file(path)
    fitted = fitted.with_checks([])
    raw = LatencyModel(fitted.layers, fitted.spaces, saved["table"], fit=False)
    moved = sum(1 for k, v in monotone(saved["table"]).items() if abs(v - saved["table"][k]) > 1e-12)
    batch = batch_of(path, saved)
    errors = [{"measured_ms": ms, "as_measured": raw.uncorrected(w) / ms - 1, "fitted": fitted.uncorrected(w) / ms - 1}
              for w, ms in checks_of(batch, saved, rounds)]
    return {"file": str(path), "backend": saved.get("backend"), "precision": saved.get("precision"), "batch": batch,
            "variants": sum(1 for k in saved["table"] if "|" in k), "moved": moved,
            "checks": errors}


def project_of(path: Path) -> str:
    """The project a push's file belongs to (``<project>/.edgekit/latency/…``), else the file's name."""
    pushed = path.parent.name == "latency" and path.parent.parent.name == ".edgekit"
    return path.parents[2].name if pushed else path.stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--rounds", type=Path, default=None, help="a latency_prune.py result: its check rounds")
    parser.add_argument("--name", default="latency_table_fit")
    args = parser.parse_args()
    rows = [row_of(path, args.rounds) for path in args.files]
    table = [[project_of(Path(r["file"])), f"{r['backend'] or '-'} {r['precision'] or ''}", r["batch"],
              f"{r['moved']}/{r['variants']}",
              ", ".join(f"{c['as_measured']:+.0%}" for c in r["checks"]) or "-",
              ", ".join(f"{c['fitted']:+.0%}" for c in r["checks"]) or "-"] for r in rows]
    report(args.name, "whole models checked on the device: uncorrected prediction error, table as measured → fitted",
           ["project", "runtime", "batch", "variants moved", "as measured", "fitted"], table,
           {"settings": {"files": [str(f) for f in args.files], "rounds": str(args.rounds)}, "rows": rows})


if __name__ == "__main__":
    main()
