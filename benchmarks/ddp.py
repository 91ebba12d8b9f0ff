"""Training stages in 1 vs 2 torch.distributed (gloo, CPU) processes: top-1 and time.

    python benchmarks/ddp.py [--epochs 6] [--finetune-epochs 3] [--seeds 0,1]

`edgekit train` and pruning's fine-tune, each run by the CLI as one process and as 2 DDP workers started by
`[train] nproc = 2` (torch.distributed.run, gloo), once per seed (`[train] seed`). The 2 workers take one
process's steps by construction (host/train/distributed.py), so the top-1s should agree up to float rounding
(target: the 2-process fine-tune within 0.5 point, per seed and on average). The cores are
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


def project_text(nproc: int, epochs: int, finetune_epochs: int, seed: int) -> str:
    return deploy_toml(
        project={"name": "ddp"},
        model={"arch": "resnet20", "width": 0.25, "num_classes": 10, "checkpoint": "model.pt"},
        data={"path": "data"},
        train={"epochs": epochs, "augment": ["crop"], "nproc": nproc, "seed": seed},
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


def one_seed(work: Path, seed: int, args: argparse.Namespace, rows: list[list]) -> dict:
    """Train with 1 and 2 processes, then prune + fine-tune both from the single process's checkpoint."""
    data: dict = {}
    for nproc, threads in ((1, 2), (2, 1)):
        project = work / f"seed{seed}-nproc{nproc}"
        project.mkdir()
        (project / "data").symlink_to(work / "data")
        (project / "deploy.toml").write_text(project_text(nproc, args.epochs, args.finetune_epochs, seed))
        trained, train_s = run(project, threads, "train")
        data[f"train_{nproc}"] = {"top1": trained["top1"], "seconds": train_s}
        rows.append([seed, f"edgekit train, {nproc} process(es)", trained["top1"] * 100, train_s])
    # the fine-tune starts from the same checkpoint in both runs: the single process's
    shutil.copy(work / f"seed{seed}-nproc1" / "model.pt", work / f"seed{seed}-nproc2" / "model.pt")
    for nproc, threads in ((1, 2), (2, 1)):
        optimized, wall = run(work / f"seed{seed}-nproc{nproc}", threads, "optimize")
        pruned = [row for row in optimized["stages"] if row["step"] == "prune" and row.get("top1") is not None][-1]
        data[f"finetune_{nproc}"] = {"top1": pruned["top1"], "stage_seconds": pruned["computed_s"], "wall": wall}
        rows.append([seed, f"prune 40% + fine-tune, {nproc} process(es)", pruned["top1"] * 100, pruned["computed_s"]])
    data["finetune_gap_points"] = abs(data["finetune_2"]["top1"] - data["finetune_1"]["top1"]) * 100
    data["train_gap_points"] = abs(data["train_2"]["top1"] - data["train_1"]["top1"]) * 100
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1", help="comma-separated [train] seeds")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="edgekit-ddp-"))
    write_digits(work / "data")
    rows: list[list] = []
    data: dict = {"seeds": {}}
    for seed in seeds:  # each seed's gaps as soon as they are known (a long run stopped early keeps them)
        data["seeds"][seed] = result = one_seed(work, seed, args, rows)
        print(f"seed {seed}: top-1 gap train {result['train_gap_points']:.2f} points, "
              f"fine-tune {result['finetune_gap_points']:.2f} points", flush=True)
    for kind in ("train", "finetune"):
        gaps = [data["seeds"][seed][f"{kind}_gap_points"] for seed in seeds]
        data[f"{kind}_gap_points_mean"] = sum(gaps) / len(gaps)
    data["settings"] = vars(args)
    report("ddp", "1 vs 2 gloo processes (torch.distributed, CPU): held-out top-1 and seconds",
           ["seed", "run", "top-1 %", "seconds"], rows, data)
    print(f"mean gap: train {data['train_gap_points_mean']:.2f} points, "
          f"fine-tune {data['finetune_gap_points_mean']:.2f} points")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
