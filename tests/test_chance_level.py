"""No silent chance-level model (issue 21): a prune that leaves a trained model guessing is refused whatever the
accuracy budget says, a trained model at chance is said on every push and in its report, and a training that
ends far below what its data allows gets a hint naming the [train] setting to change."""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest

from edgekit.host.config import PruneSection, TrainSection, deploy_toml
from edgekit.host.errors import CheckFailed
from edgekit.host.optimize.prune.stage import check_not_at_chance
from edgekit.host.records.report import model_warnings
from edgekit.host.train.diagnose import Recipe, training_hint

from .conftest import kill_agents, run_cli

RECIPE = Recipe(epochs=15, lr=0.05, batch_size=64, weight_decay=5e-4, augment=())
CHANCE = 0.1


def hint(held_out: float, train_eval: float, losses: list[float]) -> str | None:
    return training_hint(held_out, train_eval, losses, CHANCE, 10, RECIPE)


def test_the_hint_names_the_setting_for_each_cause_of_a_low_training():
    assert "lower train.lr (now 0.05; try 0.01)" in hint(0.10, 0.10, [2.31, 2.30])  # never better than guessing
    assert "lower train.lr" in hint(0.10, 0.10, [2.2, math.nan])  # diverged
    assert "lower train.lr" in hint(0.30, 0.30, [1.2, 1.25, 1.3])  # rising
    assert "raise train.lr (now 1e-06; try 0.01)" in training_hint(0.1, 0.1, [2.3], CHANCE, 10,
                                                                   Recipe(1, 1e-6, 64, 5e-4, ()))  # never moved
    assert "train.epochs now 15; try 30" in hint(0.40, 0.45, [2.0, 1.5])  # falling, still high
    batchnorm = hint(0.41, 0.40, [1.0, 0.1])  # fits while training, not in eval mode (MNASNet's 41 %)
    assert "BatchNorm" in batchnorm and "train.batch_size (now 64)" in batchnorm
    memorises = hint(0.41, 0.99, [1.0, 0.1])
    assert "memorises" in memorises and "train.augment = ['crop']" in memorises and "train.weight_decay" in memorises
    assert "train.augment" not in training_hint(0.41, 0.99, [1.0, 0.1], CHANCE, 10,
                                                Recipe(15, 0.05, 64, 5e-4, ("crop",)))
    assert hint(0.90, 0.99, [1.0, 0.1]) is None  # a training that went well gets no word
    assert hint(0.20, 0.20, []) is None  # nothing to go on
    assert all(line.startswith("hint: held-out top-1 ") for line in
               [hint(0.1, 0.1, [2.3, 2.3]), hint(0.4, 0.45, [2.0, 1.5]), batchnorm, memorises])


@pytest.mark.parametrize("allow, budget", [(True, 0.01), (False, 1.0), (True, None)])
def test_a_prune_down_to_chance_is_refused_whatever_the_budget_says(allow, budget):
    config = SimpleNamespace(prune=PruneSection(enabled=True, ratio=0.5, finetune_epochs=1,
                                                allow_accuracy_drop=allow, max_accuracy_drop=budget),
                             train=TrainSection())
    with pytest.raises(CheckFailed) as refused:
        check_not_at_chance(config, 0.41, 0.13, CHANCE, 360)
    line = str(refused.value)
    assert "prune + fine-tune left the model at chance: top-1 41.0% → 13.0% on 360 held-out images" in line
    assert "prune.finetune_epochs = 3, now 1" in line and "prune.ratio = 0.25, now 0.5" in line
    assert "\n" not in line
    check_not_at_chance(config, 0.41, 0.35, CHANCE, 360)  # a loss, not a collapse: the budget's call
    check_not_at_chance(config, 0.12, 0.10, CHANCE, 360)  # trained at chance: said at load, pruning changed nothing
    assert "prune.lr" not in line  # fine-tuned slower than trained (0.01 < train.lr 0.1): not the cause
    skewed = SimpleNamespace(prune=PruneSection(enabled=True), train=TrainSection())
    check_not_at_chance(skewed, 0.95, 0.83, 0.80, 360)  # chance is the commonest class's share: 80 % here
    with pytest.raises(CheckFailed):
        check_not_at_chance(skewed, 0.95, 0.81, 0.80, 360)


def test_a_collapse_fine_tuned_faster_than_the_training_names_prune_lr_first():
    """SqueezeNet trained at 0.002 (its classifier's ReLU dies above that) collapsed when fine-tuned at the
    default prune.lr 0.01: the refusal named only longer fine-tuning and less pruning."""
    config = SimpleNamespace(prune=PruneSection(enabled=True, ratio=0.5, finetune_epochs=3),
                             train=TrainSection(lr=0.002))
    with pytest.raises(CheckFailed) as refused:
        check_not_at_chance(config, 0.753, 0.103, CHANCE, 360)
    assert str(refused.value).endswith(". Fine-tune no faster than it was trained (prune.lr = 0.002, now 0.01), "
                                       "fine-tune longer (prune.finetune_epochs = 6, now 3) or prune less "
                                       "(prune.ratio = 0.25, now 0.5)")


def test_a_report_of_a_model_trained_at_chance_says_so():
    line = "the trained model's held-out top-1 10.0% is near chance (10.0%): ..."
    assert model_warnings({"host": {"chance_warning": line}})[0] == line
    assert model_warnings({"host": {"chance_warning": None}}) == []


def test_a_report_says_where_the_pushed_model_is_slower_than_the_baseline():
    """RegNetY-400MF pruned by half read 0.47× at batch 32 (its bf16 file failed validation; the unpruned
    model ran bf16): a figure under 1 in a table, and no word."""
    baseline = {"label": "unpruned bf16 on openvino"}
    report = {"host": {}, "benchmarks": [{"batch": 1, "speedup": 1.91, "baseline": baseline},
                                         {"batch": 32, "speedup": 0.47, "baseline": baseline},
                                         {"batch": 64, "speedup": 0.95, "baseline": baseline}]}
    assert model_warnings(report) == ["at batch 32 the pushed model runs at 0.47× the speed of the baseline (unpruned "
                                      "bf16 on openvino): slower than the model it came from, run as users run it; "
                                      "the auto table says why faster candidates were not served (validation, "
                                      "build), or prune more, or keep the unpruned model on this device"]


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_push_whose_fine_tuning_collapses_is_refused_in_one_line_despite_allow_accuracy_drop(project):
    """The tiny project's model (trained well above chance) fine-tuned at a learning rate that wrecks it, with
    every budget waived: the push stops after the prune stage, in one line naming it and what to change."""
    config = project / "deploy.toml"
    config.write_text(config.read_text() + "\n[prune]\nenabled = true\nratio = 0.5\nround_to = 2\n"
                      "finetune_epochs = 1\nlr = 1000.0\nearly_stop = false\nsparsity_epochs = 0\n"
                      "max_accuracy_drop = 1.0\nallow_accuracy_drop = true\n")
    result = run_cli("push", "local", cwd=project)
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "prune + fine-tune left the model at chance" in lines[0] and "prune.finetune_epochs" in lines[0]
    assert "model.int8" not in result.stderr  # refused before calibration: nothing was built or uploaded


@pytest.mark.slow
def test_a_training_that_ends_at_chance_warns_hints_and_its_push_says_so(tmp_path, digits_dir):
    """A learning rate far too low: `edgekit train` warns of chance and hints at train.lr; the push of that
    model goes on (its latency is still worth having) and says, on the host and in the report, what it is.
    (Too high a rate diverges, and the export refuses logits that reach nan: another line.)"""
    shutil.copytree(digits_dir, tmp_path / "data")
    (tmp_path / "deploy.toml").write_text(deploy_toml(
        project={"name": "guess"}, model={"arch": "resnet20", "width": 0.25, "checkpoint": "model.pt"},
        data={"path": "data"}, input={"batch_sizes": [1]}, train={"epochs": 1, "lr": 1e-6, "augment": ["crop"]},
        optimize={"reference_samples": 16}, quantize={"enabled": False},
        benchmark={"warmup_s": 0.05, "duration_s": 0.2, "min_iterations": 5, "rounds": 1},
        devices={"local": {"kind": "local", "backend": "onnxruntime", "precision": "fp32"}}))
    env = dict(os.environ, EDGEKIT_HOME=str(tmp_path / "home"))
    trained = run_cli("train", "--json", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    meta = json.loads(trained.stdout)
    assert meta["warning"] and "near chance" in trained.stderr
    assert meta["hint"] and "raise train.lr (now 1e-06; try 0.01)" in meta["hint"] and "hint:" in trained.stderr
    try:
        pushed = run_cli("push", "local", "--json", cwd=tmp_path, env=env)
        assert pushed.returncode == 0, pushed.stderr
        said = " ".join(pushed.stderr.split())  # the console wraps long lines
        assert "near chance" in said and "the push goes on (latency only)" in said
        report = json.loads(pushed.stdout)["report"]
        assert "near chance" in model_warnings(report)[0]
    finally:
        kill_agents(tmp_path / "home")
