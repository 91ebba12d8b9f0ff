"""deploy.toml mistakes: one line naming the file and key, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.host.config import deploy_toml, load_config
from edgekit.host.errors import ConfigError

from .conftest import TINY_PROJECT, run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_the_repository_demo_config_is_valid():
    config = load_config(Path(__file__).parent.parent / "deploy.toml")
    assert config.device("local").kind == "local" and config.input.shape == [3, 32, 32]


@pytest.mark.parametrize("old, new, words", [
    ("width = 0.25", "width = 0.25\nwidht = 2", "model.widht: unknown key"),
    ("width = 0.25", 'width = "wide"', "model.width: Input should be a valid number"),
    ("width = 0.25", "width = -1", "model.width: Input should be greater than 0"),
    ("batch_sizes = [1, 8]", "batch_sizes = [0]", "input.batch_sizes: must be a non-empty list"),
    ('name = "tiny"', 'name = "../evil"', "project.name: String should match pattern"),
    ('[project]\nname = "tiny"', "", "project: required key is missing"),
    ("[benchmark]", "[devices.jet]\nbackend = \"tensorrt\"\n[benchmark]", "devices.jet: an ssh device needs host"),
    ("[benchmark]", "[prune]\nscope = \"global\"\ncost_weight = 0.2\n[benchmark]", "prune: cost_weight shapes uniform"),
])
def test_bad_values_are_named_with_their_key(tmp_path, old, new, words):
    path = write(tmp_path, TINY_PROJECT.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_cli_reports_config_errors_in_one_line_with_exit_code_2(tmp_path):
    write(tmp_path, TINY_PROJECT.replace("width = 0.25", "width = -1"))
    result = run_cli("optimize", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "model.width" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_checkpoint_is_one_line_naming_the_key(tmp_path):
    write(tmp_path, TINY_PROJECT)
    (tmp_path / "data").mkdir()
    result = run_cli("push", "local", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.checkpoint" in result.stderr and "edgekit train" in result.stderr


def test_deploy_toml_writes_what_load_config_reads(tmp_path):
    text = deploy_toml(project={"name": "p"}, model={"arch": 'zoo:make "x"', "width": 0.5, "checkpoint": "a\\b.pt"},
                       data={"path": tmp_path / "d"}, input={"batch_sizes": [1, 8]},
                       prune={"enabled": True, "max_accuracy_drop": None, "cost_weight": 1e-05},
                       devices={"local": {"kind": "local"}, "jet.1": {"host": "h", "groups": ["lab"]}})
    config = load_config(write(tmp_path, text))
    assert config.model.arch == 'zoo:make "x"' and config.model.checkpoint.name == "a\\b.pt"
    assert config.data.path == tmp_path / "d" and config.input.batch_sizes == [1, 8]
    assert config.prune.enabled and config.prune.max_accuracy_drop == 0.01 and config.prune.cost_weight == 1e-05
    assert config.devices["local"].kind == "local" and config.device("jet.1").groups == ["lab"]


def test_unknown_device_lists_the_known_ones(tmp_path):
    config = load_config(write(tmp_path, TINY_PROJECT))
    with pytest.raises(ConfigError, match="known devices: local"):
        config.device("jetson")


def test_an_internal_error_is_one_line_naming_where_its_traceback_went(monkeypatch, tmp_path, capsys):
    """A bug (often met on a model nobody has tried) must not spill a traceback over the user's terminal."""
    from edgekit.host import cli

    def broken(args=None):
        raise RuntimeError("boom on an unusual model\nsecond line")

    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    monkeypatch.delenv("EDGEKIT_TRACEBACK", raising=False)
    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    line = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and "\n" not in line and "Traceback" not in line
    assert line.startswith("error: internal error (RuntimeError: boom on an unusual model)")
    saved = sorted(tmp_path.glob("crash-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in line and "Traceback" in saved[0].read_text()
    monkeypatch.setenv("EDGEKIT_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main([])
