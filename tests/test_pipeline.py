"""The pipeline's declared stages: which change reruns which stage, and a cache safe under concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from edgekit.host.config import deploy_toml, load_config
from edgekit.host.optimize import STAGES, Output, Stage, stage_keys
from edgekit.host.optimize.cache import StageCache
from edgekit.host.optimize.runner import run_stages

NAMES = [stage.name for stage in STAGES]
PROJECT = deploy_toml(project={"name": "keys"}, model={"arch": "resnet20", "checkpoint": "model.pt"},
                      data={"path": "data"})


@pytest.fixture
def keyed(tmp_path):
    """A project whose files exist (only their content is hashed here, nothing is loaded)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data_batch_1").write_bytes(b"images")
    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "a.png").write_bytes(b"png")

    def keys(extra: str = "") -> dict[str, str]:
        (tmp_path / "deploy.toml").write_text(PROJECT + extra)
        return dict(zip(NAMES, stage_keys(load_config(tmp_path / "deploy.toml"), STAGES)))

    keys.root = tmp_path
    return keys


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [name for name in NAMES if before[name] != after[name]]


def test_stages_are_declared_in_order():
    assert NAMES == ["load", "prune", "fold", "export", "calibrate", "qat", "evaluate"]


def test_quantize_reruns_only_calibration_and_evaluation(keyed):
    assert changed(keyed(), keyed('[quantize]\nmethod = "minmax"\n')) == ["calibrate", "qat", "evaluate"]


def test_prune_reruns_from_pruning(keyed):
    assert changed(keyed(), keyed("[prune]\nenabled = true\n")) == NAMES[1:]


def test_fold_and_opset_rerun_from_their_stage(keyed):
    assert changed(keyed(), keyed("[optimize]\nfold_bn = false\n")) == NAMES[2:]
    assert changed(keyed(), keyed("[optimize]\nreference_samples = 10\n")) == NAMES[3:]
    assert changed(keyed(), keyed("[optimize]\nopset = 13\n")) == NAMES  # the baseline export uses it too


def test_checkpoint_train_and_data_rerun_everything(keyed):
    base = keyed()
    assert changed(base, keyed("[train]\nepochs = 3\n")) == NAMES
    (keyed.root / "model.pt").write_bytes(b"other weights")
    assert changed(base, keyed()) == NAMES
    (keyed.root / "model.pt").write_bytes(b"weights")
    assert changed(base, keyed()) == []  # content, not the file's time stamp
    (keyed.root / "data" / "data_batch_1").write_bytes(b"other images")
    assert changed(base, keyed()) == NAMES


def test_benchmark_devices_and_budget_rerun_nothing(keyed):
    extra = ('[benchmark]\nduration_s = 9.0\n[budget]\nmax_p99_ms = 3.0\n'
             '[devices.jetson]\nhost = "j"\nprecision = "int8"\n')
    assert changed(keyed(), keyed(extra)) == []


def test_validation_reruns_the_int8_choice(keyed):
    """The device's rule, run on the host, decides which INT8 route (PTQ, fallback, QAT) is good enough."""
    assert changed(keyed(), keyed("[validation]\nmin_cosine = 0.5\n")) == ["calibrate", "qat", "evaluate"]


def test_quantize_source_is_keyed_by_its_contents(keyed):
    source = '[quantize]\nsource = "calib"\n'
    before = keyed(source)
    (keyed.root / "calib" / "b.png").write_bytes(b"another image")
    assert changed(before, keyed(source)) == ["calibrate", "qat", "evaluate"]
    (keyed.root / "calib" / "b.png").write_bytes(b"changed image")
    assert changed(before, keyed(source)) == ["calibrate", "qat", "evaluate"]


def test_a_path_spelled_differently_is_the_same_input(keyed):
    spelled = keyed().copy()
    (keyed.root / "deploy.toml").write_text(PROJECT.replace('"model.pt"', '"./model.pt"'))
    assert stage_keys(load_config(keyed.root / "deploy.toml"), STAGES) == list(spelled.values())


# -- the runner and its cache, with stages that count their runs ---------------------------------
class Counting(Stage):
    """Writes its name and the previous stage's value; records every real run in a log file."""

    def __init__(self, name: str, reads: tuple[str, ...], log: Path, delay: float = 0.0) -> None:
        self.name, self.reads, self.log, self.delay = name, reads, log, delay

    def run(self, ctx, out: Path) -> Output:
        import time

        time.sleep(self.delay)
        with self.log.open("a") as handle:
            handle.write(self.name + "\n")
        value = ctx.get("value") + [self.name] if "value" in ctx.values else [self.name]
        (out / f"{self.name}.json").write_text(json.dumps(value))
        ctx.put("value", value)
        return Output(rows=[{"stage": self.name, "top1": 0.5}], info={"value": value}, files=[f"{self.name}.json"])

    def restore(self, ctx, out: Path, info: dict) -> None:
        ctx.put("value", info["value"])


def counting_stages(log: Path, delay: float = 0.0) -> list[Stage]:
    return [Counting("a", ("model",), log, delay), Counting("b", ("quantize",), log, delay),
            Counting("c", (), log, delay)]


def ran(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_runner_reruns_from_the_first_changed_stage_and_hands_on_cached_values(keyed):
    keyed()
    log = keyed.root / "log"
    config = load_config(keyed.root / "deploy.toml")
    first = run_stages(config, counting_stages(log), say=lambda m: None)
    assert first.ran == ["a", "b", "c"] and [r["status"] for r in first.rows] == ["ran"] * 3
    again = run_stages(config, counting_stages(log), say=lambda m: None)
    assert again.ran == [] and [r["status"] for r in again.rows] == ["cached"] * 3
    keyed('[quantize]\nmethod = "mse"\n')
    third = run_stages(load_config(keyed.root / "deploy.toml"), counting_stages(log), say=lambda m: None)
    assert third.ran == ["b", "c"] and third.ctx.get("value") == ["a", "b", "c"]
    assert json.loads(third.ctx.files["c.json"].read_text()) == ["a", "b", "c"]
    assert ran(log) == ["a", "b", "c", "b", "c"]
    forced = run_stages(config, counting_stages(log), say=lambda m: None, force=True)
    assert forced.ran == ["a", "b", "c"]


def test_a_failing_stage_leaves_no_result_and_runs_again(keyed):
    keyed()
    config = load_config(keyed.root / "deploy.toml")

    class Broken(Stage):
        name = "broken"

        def run(self, ctx, out):
            (out / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stages(config, [Broken()], say=lambda m: None)
    left = [p.name for p in (config.state_dir / "cache" / "broken").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_the_loser_of_a_publish_race_uses_the_winners_result(tmp_path):
    cache = StageCache(tmp_path)
    key = "k" * 64
    first, second = cache.scratch("s", key), cache.scratch("s", key)
    (first / "f").write_text("winner")
    (second / "f").write_text("loser")
    assert cache.publish("s", key, first, {"rows": [], "info": {"who": 1}, "files": ["f"], "wall_s": 0})
    assert not cache.publish("s", key, second, {"rows": [], "info": {"who": 2}, "files": ["f"], "wall_s": 0})
    assert cache.load("s", key)["info"] == {"who": 1}
    assert (cache.directory("s", key) / "f").read_text() == "winner" and not second.exists()


def _cold_push(root: str, log: str, queue) -> None:
    config = load_config(Path(root) / "deploy.toml")
    result = run_stages(config, counting_stages(Path(log), delay=0.3), say=lambda m: None)
    queue.put((result.ctx.get("value"), {k: str(v) for k, v in result.directories.items()}))


def test_concurrent_cold_runs_compute_each_stage_once(keyed):
    keyed()
    log = keyed.root / "log"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_cold_push, args=(str(keyed.root), str(log), queue)) for _ in range(5)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert all(worker.exitcode == 0 for worker in workers)
    assert sorted(ran(log)) == ["a", "b", "c"]
    assert all(result == results[0] for result in results) and results[0][0] == ["a", "b", "c"]
    leftovers = [p.name for p in (keyed.root / ".edgekit" / "cache").rglob(".tmp-*")]
    assert leftovers == []


def test_code_fingerprint_lists_only_python_sources():
    from edgekit.host.optimize.fingerprint import code_files

    files = code_files()
    assert any(f.name == "runner.py" for f in files) and all(f.suffix == ".py" for f in files)
    assert len(files) < 500

