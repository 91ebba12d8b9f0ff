"""Training stages under torch.distributed: 2 gloo processes on the CPU, started by `[train] nproc = 2`."""

from __future__ import annotations

import json

import pytest

from edgekit.host.config import load_config
from edgekit.host.optimize import STAGES, stage_keys

from .conftest import run_cli

pytestmark = pytest.mark.slow


def test_stage_keys_do_not_depend_on_the_number_of_training_processes(project):
    config = load_config(project / "deploy.toml")
    two = config.model_copy(update={"train": config.train.model_copy(update={"nproc": 2})})
    assert stage_keys(config, STAGES) == stage_keys(two, STAGES)


def test_two_gloo_processes_train_and_fine_tune_with_rank_0_alone_writing(project):
    """`edgekit train` and pruning's fine-tune as 2 DDP workers: one checkpoint, one result on stdout, one cache
    entry and no scratch left by the other rank (top-1 against one process: benchmarks/ddp.py)."""
    from edgekit.host.train.checkpoint import read_checkpoint

    config = project / "deploy.toml"
    config.write_text(config.read_text().replace("[train]", "[train]\nnproc = 2") +
                      "\n[prune]\nenabled = true\nratio = 0.25\nsteps = 1\nfinetune_epochs = 1\nsparsity_epochs = 0\n"
                      "allow_accuracy_drop = true\n\n[quantize]\nenabled = false\n")
    result = run_cli("train", "--epochs", "1", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    ddp = json.loads(result.stdout)  # rank 1 printed nothing: stdout is rank 0's one JSON document
    written = read_checkpoint(project / "runs" / "tiny.pt")[1]
    assert written["top1"] == ddp["top1"] and written["epochs"] == ddp["epochs"] == 1  # rank 0's evaluation
    optimized = run_cli("optimize", "--json", cwd=project)
    assert optimized.returncode == 0, optimized.stderr
    assert "torch.distributed workers" in optimized.stderr
    rows = {row["step"]: row for row in json.loads(optimized.stdout)["stages"]}
    assert rows["prune"]["status"] == "cached"  # the workers computed it; this process restored it
    entries = [p for p in (project / ".edgekit" / "cache" / "prune").iterdir()]
    assert len([p for p in entries if not p.name.startswith(".")]) == 1
    assert not [p for p in entries if p.name.startswith(".tmp-")]


WORKER = '''
import sys
import numpy as np
import torch
from torch import nn
from edgekit.host.train import distributed
from edgekit.host.train.data import Split
from edgekit.host.train.loop import train

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 10))
rng = np.random.default_rng(0)
split = Split(rng.integers(0, 256, (75, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, 75))
# 75 samples in global batches of 16: the last batch (11) splits 6/5 between 2 ranks; 6 epochs are 30 steps,
# enough that training's running statistics stand (a shorter run has them re-estimated: loop.slow_batchnorms)
train(model, split, [120.0] * 3, [60.0] * 3, epochs=6, batch_size=16, lr=0.1, augment=("crop", "flip"), seed=3)
if distributed.is_main():
    torch.save(model.state_dict(), sys.argv[1])
distributed.end(0)  # as edgekit's own workers end (torch's teardown can abort a finished worker)
'''


def test_two_workers_take_the_single_process_steps(tmp_path):
    """By construction, not in expectation: 2 DDP workers (gloo) end with one process's weights and BatchNorm
    statistics (same global batches, same augmentation, batch-wide BatchNorm statistics, loss weighted by share)."""
    import os
    import subprocess
    import sys

    import torch

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for nproc in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   str(script), str(tmp_path / f"{nproc}.pt")]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "2.pt")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name].double(), two[name].double(), rtol=1e-4, atol=1e-5), name
    assert one["1.num_batches_tracked"] == two["1.num_batches_tracked"] == 30


LEAVER = '''
import atexit
import sys
from pathlib import Path

import torch.distributed as dist
from edgekit.host.train import distributed

# registered first, so it runs last: what the interpreter's teardown finds
atexit.register(lambda: Path(f"{sys.argv[1]}{distributed.rank()}").write_text(str(dist.is_initialized())))
distributed.barrier()
'''


def test_workers_leave_the_process_group_before_the_interpreter_exits(tmp_path):
    """A gloo group still alive when the interpreter is torn down aborts a worker now and then (SIGABRT after its
    work is done, and torchrun calls the run failed): every worker leaves the group at exit."""
    import os
    import subprocess
    import sys

    script = tmp_path / "leaver.py"
    script.write_text(LEAVER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
               str(tmp_path / "rank")]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
