"""Training stages in 1 vs 2 torch.distributed (gloo, CPU) processes: top-1 and time.

    python benchmarks/ddp.py [--epochs 6] [--finetune-epochs 3]

`edgekit train` and pruning's fine-tune, each run by the CLI as one process and as 2 DDP workers started by
`[train] nproc = 2` (torch.distributed.run, gloo). The global batch and learning-rate schedule are the same,
so the top-1s should agree within noise (target: the 2-process fine-tune within 0.5 point). The cores are
shared fairly: 2 threads for the single process, 1 for each worker. On this loaded 2-core machine the
times say little about scaling; a GPU per rank is where DDP pays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.host.config import deploy_toml  # noqa: E402
from edgekit.host.train.data import write_digits  # noqa: E402

EDGEKIT = str(Path(sys.executable).parent / "edgekit")


def project_text(nproc: int, epochs: int, finetune_epochs: int) -> str:
    return deploy_toml(
        project={"name": "ddp"},
        model={"arch": "resnet20", "width": 0.25, "num_classes": 10, "checkpoint": "model.pt"},
        data={"path": "data"},
        train={"epochs": epochs, "augment": ["crop"], "nproc": nproc},
        prune={"enabled": True, "ratio": 0.4, "steps": 1, "finetune_epochs": finetune_epochs, "sparsity_epochs": 0,
               "early_stop": False, "allow_accuracy_drop": True},
        quantize={"enabled": False},
    )


def run(project: Path, threads: int, *args: str) -> tuple[dict, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), EDGEKIT_HOME=str(project / "home"))
    start = time.perf_counter()
    result = subprocess.run([EDGEKIT, *args, "--json"], cwd=project, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"edgekit {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-ddp-"))
    write_digits(work / "data")
    rows, data = [], {}
    for nproc, threads in ((1, 2), (2, 1)):
        project = work / f"nproc{nproc}"
        project.mkdir()
        (project / "data").symlink_to(work / "data")
        (project / "deploy.toml").write_text(project_text(nproc, args.epochs, args.finetune_epochs))
        trained, train_s = run(project, threads, "train")
        data[f"train_{nproc}"] = {"top1": trained["top1"], "seconds": train_s}
        rows.append([f"edgekit train, {nproc} process(es)", trained["top1"] * 100, train_s])
    # the fine-tune starts from the same checkpoint in both runs: the single process's
    for nproc in (2,):
        shutil.copy(work / "nproc1" / "model.pt", work / f"nproc{nproc}" / "model.pt")
    for nproc, threads in ((1, 2), (2, 1)):
        optimized, wall = run(work / f"nproc{nproc}", threads, "optimize")
        pruned = [row for row in optimized["stages"] if row["step"] == "prune" and row.get("top1") is not None][-1]
        data[f"finetune_{nproc}"] = {"top1": pruned["top1"], "stage_seconds": pruned["computed_s"], "wall": wall}
        rows.append([f"prune 40% + fine-tune, {nproc} process(es)", pruned["top1"] * 100, pruned["computed_s"]])
    data["finetune_gap_points"] = abs(data["finetune_2"]["top1"] - data["finetune_1"]["top1"]) * 100
    data["train_gap_points"] = abs(data["train_2"]["top1"] - data["train_1"]["top1"]) * 100
    data["settings"] = vars(args)
    report("ddp", "1 vs 2 gloo processes (torch.distributed, CPU): held-out top-1 and seconds",
           ["run", "top-1 %", "seconds"], rows, data)
    print(f"top-1 gap: train {data['train_gap_points']:.2f} points, fine-tune {data['finetune_gap_points']:.2f} points")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
