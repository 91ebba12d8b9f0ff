"""Fault injection on the host side: damaged and partial cache entries of every stage, Ctrl-C and SIGKILL of
`edgekit push` during every host stage and during the upload, a full host disk, unreadable inputs of every
kind, engines gone from behind `current`. Every case: one clear line (no traceback, no internal error),
nothing left behind that makes the next push fail.

One optimised tiny project is made per module and copied per test (cache included), so a fault costs only the
stage it makes run again.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.device.agent.spool import Spool
from edgekit.host.config import load_config
from edgekit.host.optimize import STAGES, optimize
from edgekit.host.optimize.cache import RESULT, StageCache

from .conftest import kill_agents, run_cli
from .faults import current_problem, one_clear_line, tmpfs, trial
from .test_faults import fill

pytestmark = pytest.mark.slow
TITLES = {stage.name: stage.title for stage in STAGES}


@pytest.fixture(scope="module")
def optimized_project(trained_project, tmp_path_factory) -> Path:
    """The session's trained project with every stage cached (computed once per module)."""
    root = tmp_path_factory.mktemp("host-faults") / "project"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    optimize(load_config(root / "deploy.toml"), say=lambda message: None)
    return root


@pytest.fixture
def host(tmp_path, optimized_project, monkeypatch) -> Path:
    """A copy of the optimised project (its cache too) with its own EDGEKIT_HOME (its own local device)."""
    root = tmp_path / "project"
    shutil.copytree(optimized_project, root)
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    yield root
    kill_agents(home)


def cli(capsys, *args: str) -> tuple[int, str]:
    """``edgekit ARGS`` in this process (no interpreter start-up); its exit code and stderr."""
    from edgekit.host.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return code, capsys.readouterr().err


def entry(root: Path, stage: str) -> Path:
    config = load_config(root / "deploy.toml")
    from edgekit.host.optimize import stage_keys

    key = dict(zip([s.name for s in STAGES], stage_keys(config, STAGES)))[stage]
    return StageCache(config.state_dir / "cache").directory(stage, key)


def largest_file(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != RESULT]
    return max(files, key=lambda p: p.stat().st_size) if files else directory / RESULT


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in (root / ".edgekit" / "cache").glob("*/.tmp-*")]


# -- 1. damaged and partial cache entries ----------------------------------------------------------------
def test_damaged_and_partial_cache_entries_of_every_stage_are_discarded_and_recomputed(host):
    config = load_config(host / "deploy.toml")
    for stage in [s.name for s in STAGES]:
        with trial("host cache: partial (truncated) entry of each stage", stage):
            victim = largest_file(entry(host, stage))
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
            said: list[str] = []
            result = optimize(config, say=said.append)
            damaged = [m for m in said if "damaged" in m]
            assert len(damaged) == 1 and f"the {stage} stage" in damaged[0] and victim.name in damaged[0], said
            assert not result.cached
            again: list[str] = []
            assert optimize(config, say=again.append).cached and not any("damaged" in m for m in again), again
    cache = StageCache(config.state_dir / "cache")
    for stage in [s.name for s in STAGES]:  # same size, one byte changed: found by the hash, discarded
        with trial("host cache: damaged (changed byte) entry of each stage", stage):
            victim = largest_file(entry(host, stage))
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0x20
            victim.write_bytes(bytes(data))
            said = []
            key = entry(host, stage).name
            assert cache.load(stage, next(k for k in _keys(config) if k.startswith(key)), said.append) is None
            assert len(said) == 1 and "damaged" in said[0] and not entry(host, stage).exists(), said
    with trial("host cache: killed writer's leftovers are swept"):
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        stale = config.state_dir / "cache" / "export" / f".tmp-{'0' * 16}-{dead}-deadbeef"
        stale.mkdir()
        (stale / "model.onnx").write_bytes(b"partial")
        said = []
        assert not optimize(config, say=said.append).cached  # recomputes every stage discarded above
        assert optimize(config, say=lambda m: None).cached and not leftovers(host)


def _keys(config) -> list[str]:
    from edgekit.host.optimize import stage_keys

    return stage_keys(config, STAGES)


# -- 2. Ctrl-C and SIGKILL during every host stage and during the upload ------------------------------
KILLER = r"""
import os, signal, sys
stage_name, config, sig = sys.argv[1], sys.argv[2], getattr(signal, sys.argv[3])  # noqa
from edgekit.host import cli
from edgekit.host.optimize import STAGES
if stage_name == "upload":  # after the first chunk of the first blob: a partial upload on the device
    cli._UploadBar.advance = lambda self, sent: os.kill(os.getpid(), sig)
else:  # the stage wrote its files into its temporary directory, not yet published
    stage = next(s for s in STAGES if s.name == stage_name)
    original = type(stage).run
    def run(self, ctx, out):
        result = original(self, ctx, out)
        os.kill(os.getpid(), sig)
        return result
    type(stage).run = run
cli.main(["push", "local", "--config", config])
"""


def interrupt_push(root: Path, where: str, sig: str) -> subprocess.CompletedProcess:
    """``edgekit push local`` signalled (for real, by itself) at ``where``: a stage's name or "upload"."""
    if where != "upload":
        shutil.rmtree(entry(root, where))  # so the stage runs
    return subprocess.run([sys.executable, "-c", KILLER, where, str(root / "deploy.toml"), sig],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def device_unchanged(root: Path) -> list[str]:
    spool = Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device")
    problems = [f"job {p.name} was published" for p in [*spool.queue.glob("*"), *spool.jobs.glob("*")]]
    return problems + ([f"current points at {spool.current('tiny')}"] if spool.current("tiny") else [])


@pytest.fixture
def ctrl_c_reaches_python():
    """SIGINT raising KeyboardInterrupt, as in a terminal, for this test alone. A suite started in the background
    by a non-interactive shell (``make test &``, a CI runner's script) inherits SIGINT *ignored*, and Python then
    keeps it ignored: the push's self-sent Ctrl-C was lost and the push succeeded (exit 0, nothing on stderr)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_each_host_stage_and_the_upload_is_one_line_and_the_next_push_succeeds(host, capsys,
                                                                                           monkeypatch,
                                                                                           ctrl_c_reaches_python):
    """A real SIGINT, sent by the push to itself (in this process: no interpreter start-up per trial)."""
    from edgekit.host import cli as cli_module

    scenario = "host: Ctrl-C of `edgekit push` during each host stage and the upload, then a push"
    ctrl_c = lambda *args: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
    for where in [*(s.name for s in STAGES), "upload"]:
        with trial(scenario, where), monkeypatch.context() as patch:
            if where == "upload":
                patch.setattr(cli_module._UploadBar, "advance", ctrl_c)
            else:
                shutil.rmtree(entry(host, where))
                stage = next(s for s in STAGES if s.name == where)
                original = type(stage).run
                patch.setattr(type(stage), "run", lambda self, ctx, out, run=original: (run(self, ctx, out),
                                                                                         ctrl_c())[0])
            code, err = cli(capsys, "push", "local", "--config", str(host / "deploy.toml"))
            doing = "the upload to local" if where == "upload" else TITLES[where]
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 130 and lines and lines[-1] == (f"interrupted during {doing}; nothing changed on the "
                                                           "device; cached stages kept"), f"{where}: {err[-500:]}"
            assert "Traceback" not in err and not leftovers(host) and not device_unchanged(host)
    next_push_succeeds(host, scenario)


def test_sigkill_during_each_host_stage_and_the_upload_leaves_nothing_in_the_way(host):
    scenario = "host: SIGKILL of `edgekit push` during each host stage and the upload, then a push"
    for where in [*(s.name for s in STAGES), "upload"]:
        with trial(scenario, where):
            done = interrupt_push(host, where, "SIGKILL")
            assert done.returncode == -signal.SIGKILL, done.stderr[-500:]
            assert not device_unchanged(host), device_unchanged(host)
    next_push_succeeds(host, scenario)


def next_push_succeeds(host: Path, scenario: str) -> None:
    with trial(scenario, "the next push"):
        done = run_cli("push", "local", cwd=host)
        assert done.returncode == 0, done.stderr[-800:]
        assert current_problem(Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device"), "tiny") is None
        assert not leftovers(host)


# -- 3. a full host disk -------------------------------------------------------------------------------
@pytest.fixture
def host_tmpfs(tmp_path):
    with tmpfs(tmp_path / "disk", "64m", "host: full disk during optimize") as mount:
        yield mount


def test_a_full_host_disk_during_optimize_is_one_line_and_the_next_run_recovers(trained_project, host_tmpfs, capsys):
    root = host_tmpfs / "project"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    for room_kb in (40, 400):  # full in the first stage, and later in the pipeline
        with trial("host: full disk during optimize", f"{room_kb} KB free"):
            filler = fill(host_tmpfs)
            os.truncate(filler, max(0, filler.stat().st_size - room_kb * 1024))
            code, err = cli(capsys, "optimize", "--config", str(root / "deploy.toml"))
            assert code == 1 and one_clear_line(err) is None, err[-600:]
            assert "disk is full" in err and str(root / ".edgekit" / "cache") in err and "needs about" in err, err
            filler.unlink()
            assert not leftovers(root)
    with trial("host: full disk during optimize", "with room again"):
        code, err = cli(capsys, "optimize", "--config", str(root / "deploy.toml"))
        assert code == 0, err[-600:]


def test_a_full_host_disk_loses_the_run_record_not_the_run(host_tmpfs, capsys):
    from edgekit.host.records.history import History

    path = host_tmpfs / ".edgekit" / "history.db"
    assert History(path).record("jet", {"job": "j1", "status": "done"})
    filler = fill(host_tmpfs)
    with trial("host: full disk writing the run history", "a row that does not fit"):
        assert not History(path).record("jet", {"job": "j2", "status": "done", "log": "x" * 200_000})
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "j2" in err and str(path) in err and "`edgekit status jet j2`" in err, err
    with trial("host: full disk writing the run history", "no history yet"):
        fresh = History(host_tmpfs / "other" / "history.db")  # sqlite cannot even create its table
        fresh.record("jet", {"job": "j3", "status": "done"})  # kept for this process only, and said so
        err = capsys.readouterr().err
        assert "Traceback" not in err and "cannot write" in err.splitlines()[0], err
    filler.unlink()
    kept = History(path)
    assert kept.get("j1")["status"] == "done" and kept.record("jet", {"job": "j2", "status": "done"})


# -- 4. unreadable inputs of every kind -----------------------------------------------------------------
def rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(path)


def folder_data(root: Path, classes: int = 10) -> Path:
    for split, count in (("train", 3), ("test", 1)):
        for label in range(classes):
            for index in range(count):
                _png(root / split / str(label) / f"{index}.png", label * 20 + index)
    return root


def damage(host: Path, kind: str) -> str:
    """Break one input of the project; the words the one-line error must contain."""
    toml = host / "deploy.toml"
    data = host / "data"
    if kind == "deploy.toml Latin-1 byte":
        toml.write_bytes(toml.read_bytes().replace(b"[model]", "# caf\u00e9\n[model]".encode("latin-1")))
        return "line"
    if kind == "deploy.toml UTF-16":
        toml.write_bytes(toml.read_text().encode("utf-16"))
        return "UTF-8"
    if kind == "CIFAR batch truncated":
        batch = data / "test_batch"
        batch.write_bytes(batch.read_bytes()[:5000])
        return str(batch)
    if kind == "CIFAR batch not a pickle":
        (data / "data_batch_1").write_bytes(os.urandom(4096))
        return str(data / "data_batch_1")
    if kind == "CIFAR batch of the wrong shape":
        (data / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8),
                                                        b"labels": [0, 1, 2, 3]}, protocol=2))
        return str(data / "test_batch")
    checkpoint = host / "runs" / "tiny.pt"
    if kind == "checkpoint truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
        return str(checkpoint)
    if kind == "checkpoint empty":
        checkpoint.write_bytes(b"")
        return str(checkpoint)
    if kind == "checkpoint of random bytes":
        checkpoint.write_bytes(os.urandom(2048))
        return str(checkpoint)
    if kind.startswith("folder"):
        folder = folder_data(host / "images")
        rewrite(toml, 'path = "data"', 'format = "folder"\npath = "images"')
        if kind == "folder: corrupt image":
            broken = folder / "train" / "3" / "1.png"
            broken.write_bytes(broken.read_bytes()[:60])
            return str(broken)
        if kind == "folder: empty class folder":
            for image in (folder / "test" / "7").iterdir():
                image.unlink()
            return str(folder / "test" / "7")
        shutil.rmtree(folder / "test" / "9")
        return "only in train/: 9"
    source = host / "calibration.npy"
    rewrite(toml, "[optimize]", f'[quantize]\nsource = "{source.name}"\n\n[optimize]')
    if kind == "quantize.source .npy truncated":
        np.save(source, np.zeros((16, 3, 32, 32), np.uint8))
        source.write_bytes(source.read_bytes()[:3000])
        return str(source)
    if kind == "quantize.source .npy of objects":
        np.save(source, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return str(source)
    assert kind == "quantize.source folder: corrupt image"
    folder = host / "calib"
    _png(folder / "a.png", 10)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    rewrite(toml, f'source = "{source.name}"', 'source = "calib"')
    return str(folder / "b.png")


INPUT_FAULTS = ["deploy.toml Latin-1 byte", "deploy.toml UTF-16", "CIFAR batch truncated", "CIFAR batch not a pickle",
                "CIFAR batch of the wrong shape", "checkpoint truncated", "checkpoint empty",
                "checkpoint of random bytes", "folder: corrupt image", "folder: empty class folder",
                "folder: class folders differ", "quantize.source .npy truncated", "quantize.source .npy of objects",
                "quantize.source folder: corrupt image"]


def test_unreadable_inputs_of_every_kind_are_one_line_naming_the_file(tmp_path, optimized_project, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    for kind in INPUT_FAULTS:
        with trial("host: unreadable input is one line naming it", kind):
            root = tmp_path / kind.replace(" ", "_").replace(":", "")
            shutil.copytree(optimized_project, root)
            words = damage(root, kind)
            code, err = cli(capsys, "optimize", "--config", str(root / "deploy.toml"))
            assert code in (1, 2) and one_clear_line(err) is None, err[-600:]
            assert "internal error" not in err and words in err, err[-600:]
    with trial("host: unreadable input is one line naming it", "data.skip_unreadable counts and skips"):
        from edgekit.host.train.data import load_folder

        folder = folder_data(tmp_path / "skip")
        (folder / "train" / "2" / "0.png").write_bytes(b"not a png")
        data = load_folder(folder, (32, 32), skip_unreadable=True)
        assert data.skipped == [str(folder / "train" / "2" / "0.png")] and len(data.train) == 29


def test_a_damaged_fp16_typed_file_is_written_again(optimized_project, tmp_path):
    from edgekit.host.optimize.quantize.fp16 import add_typed_files

    with trial("host cache: damaged (changed byte) entry of each stage", "FP16-typed ONNX store"):
        source = next((optimized_project / ".edgekit" / "cache" / "export").glob("*/model.onnx"))
        said: list[str] = []
        typed = add_typed_files({"model.onnx": source}, "tensorrt", "fp16", "explicit", None, tmp_path, said.append)
        path = typed["model.fp16.onnx"]
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 2])
        add_typed_files({"model.onnx": source}, "tensorrt", "fp16", "explicit", None, tmp_path, said.append)
        assert path.read_bytes() == good and any("damaged" in m for m in said), said


def test_damaged_run_history_and_signing_key(host, capsys):
    with trial("host: unreadable input is one line naming it", "run history damaged"):
        (host / ".edgekit" / "history.db").write_bytes(b"not a database" * 100)
        code, err = cli(capsys, "report", "--config", str(host / "deploy.toml"))
        assert code == 2 and one_clear_line(err) is None and "moved it to" in err, err
    with trial("host: unreadable input is one line naming it", "signing key damaged"):
        home = Path(os.environ["EDGEKIT_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "signing_key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
        (home / "signing_key").chmod(0o600)
        code, err = cli(capsys, "push", "local", "--config", str(host / "deploy.toml"))
        assert code == 2 and one_clear_line(err) is None and "signing_key" in err, err[-600:]


# -- 5. the engine behind `current` gone or damaged ----------------------------------------------------
def test_status_and_check_say_when_the_active_engine_is_gone_and_the_agent_rolls_back(host, capsys):
    import time

    config = str(host / "deploy.toml")
    code, err = cli(capsys, "push", "local", "--config", config)
    assert code == 0, err[-800:]
    spool = Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device")
    engine = (spool.models / "tiny" / "current").resolve()
    earlier = spool.engines / ("e" * 64)  # an earlier deployment's engine, as `previous`
    shutil.copytree(engine, earlier)
    os.symlink(os.path.relpath(earlier, spool.models / "tiny"), spool.models / "tiny" / "previous")
    with trial("host: engine behind current gone: agent rolls back, status says so"):
        shutil.rmtree(engine)
        deadline = time.monotonic() + 30
        while (spool.models / "tiny" / "current").resolve() != earlier.resolve():
            assert time.monotonic() < deadline, "the agent did not switch current back to previous"
            time.sleep(0.2)
        assert current_problem(spool, "tiny") is None
        code, err = cli(capsys, "status", "local", "--config", config)
        assert code == 0 and "switched back to the previous engine" in err, err[-600:]
    with trial("host: engine behind current damaged: status and check fail and say so"):
        model_file = next(p for p in earlier.iterdir() if p.name != "engine.json")
        model_file.write_bytes(model_file.read_bytes()[:200])
        code, err = cli(capsys, "status", "local", "--config", config)
        assert code == 1 and "fails to load" in err and "push it again" in err, err[-600:]
        code, _ = cli(capsys, "device", "check", "local", "--config", config)
        assert code == 1
    with trial("host: engine behind current gone, nothing to roll back to: check fails"):
        shutil.rmtree(earlier)
        code, err = cli(capsys, "status", "local", "--config", config)
        assert code == 1 and "is gone" in err and "push it again" in err, err[-600:]
