"""The two defects of issue 11, as a user meets them (written before the fix, failing on the old code)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgekit.host.config import load_config

pytestmark = pytest.mark.slow


def copy_project(trained_project, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = root / "deploy.toml"
    config.write_text(config.read_text() + "\n[quantize]\nenabled = false\n")
    return root


def test_turning_pruning_on_after_a_cached_optimise_prunes(trained_project, tmp_path):
    from edgekit.host.optimize import optimize

    root = copy_project(trained_project, tmp_path)
    first = optimize(load_config(root / "deploy.toml"), say=lambda m: None)
    with (root / "deploy.toml").open("a") as handle:
        # one fine-tune epoch: halved without one, the tiny model is at chance (10 %), which is refused (issue 21)
        handle.write("\n[prune]\nenabled = true\nratio = 0.5\nround_to = 2\nfinetune_epochs = 1\n"
                     "allow_accuracy_drop = true\n")
    second = optimize(load_config(root / "deploy.toml"), say=lambda m: None)
    assert not second.cached
    assert second.stages[-1]["params"] < 0.5 * first.stages[-1]["params"]


def test_code_fingerprint_covers_edgekit_files_only():
    """Not the editable install's .venv (torch's sources): installing a package must not invalidate models."""
    import edgekit.calibration
    import edgekit.device
    import edgekit.host
    from edgekit.host.optimize.fingerprint import code_files

    roots = [Path(p.__file__).resolve().parent for p in (edgekit.host, edgekit.device, edgekit.calibration)]
    files = code_files()
    assert files and all(any(root in f.parents for root in roots) for f in files)
    assert not any(".venv" in f.parts or "site-packages" in f.parts for f in files)
    assert Path(edgekit.host.optimize.__file__).resolve() in files


def test_each_change_reruns_exactly_its_stages_on_a_real_project(trained_project, tmp_path):
    """The cache cases of the issue, on the real pipeline (keys alone are covered in test_pipeline)."""
    from edgekit.host.optimize import optimize

    root = tmp_path / "p"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    deploy = root / "deploy.toml"
    deploy.write_text(deploy.read_text() + "\n[quantize]\nimages = 64\nmax_accuracy_drop = 1.0\n")

    def ran(extra: str = "") -> list[str]:
        if extra:
            deploy.write_text(deploy.read_text() + extra)
        result = optimize(load_config(deploy), say=lambda m: None)
        assert all(path.is_file() for path in result.files.values())
        return [name for name, row in {r["step"]: r for r in result.stages}.items() if row["status"] == "ran"]

    assert ran() == ["load", "fold", "export", "calibrate", "evaluate"]  # prune is off: no row
    deploy.write_text(deploy.read_text().replace("duration_s = 0.2", "duration_s = 0.3"))
    assert ran("\n[budget]\nmax_p99_ms = 9.0\n[devices.jetson]\nhost = \"j\"\n") == []
    text = deploy.read_text().replace("images = 64", "images = 32")
    deploy.write_text(text)
    assert ran() == ["calibrate", "evaluate"]
    pruning = "\n[prune]\nenabled = true\nround_to = 2\nfinetune_epochs = 1\nallow_accuracy_drop = true\n"
    assert ran(pruning) == ["prune", "fold", "export", "calibrate", "evaluate"]


def test_int8_is_called_slower_than_fp32_only_when_it_clearly_is():
    """resnet18 at 32×32 got "model.int8.cpu.onnx runs slower than FP32 (batch 1: 0.09 ms vs 0.09 ms)": a tie
    within timing noise reported as a finding."""
    from edgekit.device.contract.manifest import MODEL_INT8_CPU
    from edgekit.host.optimize.evaluate import slower_than_fp32

    def rows(ms: float) -> list[dict]:
        return [{"file": MODEL_INT8_CPU, "latency_ms": {1: ms}}]

    assert slower_than_fp32(rows(0.094), {"1": 0.091}) == {}
    assert slower_than_fp32(rows(1.38), {"1": 0.88}) == {MODEL_INT8_CPU: "batch 1: 1.38 ms vs 0.88 ms"}
