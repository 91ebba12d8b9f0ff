"""Users' own models through the real CLI, pruned and INT8 on the local device: what a user sees.

Each either pushes end to end (validation passed) or fails with one line naming the cause and the next
step; never a traceback, never a silently wrong model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.host.config import deploy_toml

from .conftest import kill_agents, run_cli

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def project_toml(arch: str, width: float, finetune: int, prune: dict, quantize: dict, validation: dict) -> str:
    sections = dict(
        project={"name": arch.replace("_", "-")},
        model={"arch": f"user_models:{arch}", "width": width, "checkpoint": "model.pt"},
        data={"path": "data"}, input={"batch_sizes": [1, 8]}, train={"epochs": 2, "augment": ["crop"]},
        optimize={"reference_samples": 32}, quantize={"images": 128, **quantize},
        prune={"enabled": True, "finetune_epochs": finetune, "early_stop": False, **prune},
        benchmark={"warmup_s": 0.05, "duration_s": 0.2, "min_iterations": 5})
    if validation:
        sections["validation"] = validation
    # the same runtime as the host: the tight comparison
    sections["devices"] = {"local": {"kind": "local", "backend": "onnxruntime", "precision": "int8"}}
    return deploy_toml(**sections)


@pytest.fixture
def user_project(tmp_path, digits_dir):
    homes = []

    def make(arch: str, prune: dict | None = None, quantize: dict | None = None, finetune: int = 1,
             validation: dict | None = None, train: bool = True, width: float = 0.5):
        root = tmp_path / arch
        shutil.copytree(digits_dir, root / "data")
        (root / "deploy.toml").write_text(project_toml(arch, width, finetune, prune or {}, quantize or {},
                                                       validation or {}))
        env = dict(os.environ, EDGEKIT_HOME=str(root / "home"), PYTHONPATH=str(TESTS))
        homes.append(root / "home")
        trained = run_cli("train", cwd=root, env=env) if train else None
        return root, env, trained

    yield make
    for home in homes:
        kill_agents(home)


def push(root: Path, env: dict):
    result = run_cli("push", "local", "--json", cwd=root, env=env)
    return result, (json.loads(result.stdout) if result.returncode == 0 else None)


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_two_outputs_push_with_model_output_and_fail_in_one_line_without(user_project):
    root, env, trained = user_project("two_outputs", train=False)
    refused = run_cli("train", cwd=root, env=env)
    assert refused.returncode == 2
    assert "model output 0 has shape [2, 24] but model.num_classes = 10; set model.output = 1" in \
        one_error_line(refused)

    config = root / "deploy.toml"
    config.write_text(config.read_text().replace('checkpoint = "model.pt"', 'checkpoint = "model.pt"\noutput = 1'))
    assert run_cli("train", cwd=root, env=env).returncode == 0
    allow = "early_stop = false\nallow_accuracy_drop = true"
    config.write_text(config.read_text().replace("early_stop = false", allow))
    result, data = push(root, env)
    assert result.returncode == 0, result.stderr
    report = data["report"]
    assert report["validation"]["passed"] and report["validation"]["same_runtime"]
    assert report["host"]["outputs"] == ["logits", "output_0"]  # the embedding is exported too
    assert sorted(report["host"]["pruning"]["protected"]) == []
    cache = root / ".edgekit" / "cache"
    with np.load(next(cache.glob("evaluate/*/reference.npz"))) as reference:
        assert reference["outputs.model.int8.cpu.onnx"].shape == (32, 10)  # the classifier, all 10 classes
        assert {"outputs", "outputs.model.onnx", "outputs.model.int8.qdq.onnx"} <= set(reference.files)


def test_a_second_required_input_is_one_line(user_project):
    root, env, trained = user_project("two_inputs")
    assert trained.returncode == 2
    assert "forward needs more than the image: mask" in one_error_line(trained)


def test_pruning_that_misses_its_budget_fails_with_figures_and_allowing_it_reuses_the_pruned_model(user_project):
    root, env, trained = user_project("hard_view", finetune=0, prune={"max_accuracy_drop": 0.0}, width=1.0)
    assert trained.returncode == 0, trained.stderr
    failed, _ = push(root, env)
    line = one_error_line(failed)
    assert failed.returncode == 1 and "pruning lost" in line and "prune.allow_accuracy_drop = true" in line
    assert "left 1 layer group(s) unpruned that torch-pruning cannot follow: body.4.0" in failed.stderr

    config = root / "deploy.toml"
    config.write_text(config.read_text().replace("max_accuracy_drop = 0.0",
                                                 "max_accuracy_drop = 0.0\nallow_accuracy_drop = true"))
    result, data = push(root, env)
    assert result.returncode == 0, result.stderr
    assert "pruning on" not in result.stderr  # the pruned model came from the cache
    assert {row["status"] for row in data["optimize"]["stages"] if row["step"] == "prune"} == {"cached"}
    assert "body.4.0" in data["report"]["host"]["pruning"]["protected"]


def test_untraceable_model_folds_on_the_onnx_graph_and_the_device_rule_is_checked_before_upload(user_project):
    root, env, trained = user_project("shape_if", prune={"allow_accuracy_drop": True},
                                      quantize={"mixed_precision": False}, validation={"min_cosine": 0.9999999})
    assert trained.returncode == 0, trained.stderr
    refused, _ = push(root, env)
    line = one_error_line(refused)
    assert refused.returncode == 1
    assert "model.int8.cpu.onnx would fail validation on local" in line and "nothing was uploaded" in line
    assert "keep more layers in floating point" in line
    assert "torch.fx cannot trace the model (TraceError" in refused.stderr
    assert "folded 2 of 2 BatchNorm layers" in refused.stderr
    assert not list((root / "home" / "local-device").glob("queue/*"))  # nothing was published

    config = root / "deploy.toml"
    # a loose rule (the model is barely trained, so its INT8 top-1 agreement varies between trainings)
    loose = "min_cosine = 0.9\nmin_top1_agreement = 0.5"
    config.write_text(config.read_text().replace("min_cosine = 0.9999999", loose))
    result, data = push(root, env)
    assert result.returncode == 0, result.stderr
    assert data["report"]["host"]["folding"]["onnx_folded"] == 2
