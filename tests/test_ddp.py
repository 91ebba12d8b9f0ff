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
