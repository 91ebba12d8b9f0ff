"""The pipeline runner: a declared list of stages, each cached on its own by the hash of what it reads.

A stage names the deploy.toml sections (or single keys, ``"optimize.opset"``) and the input files it
reads; its key is the hash of exactly those, edgekit's code fingerprint and the previous stage's key.
So a change reruns the first stage that reads it and everything after, and nothing before: a stage
whose key is unchanged is restored from its directory. In-memory artefacts (the torch model, the data
set) are handed on lazily, so a fully cached pipeline never loads torch weights or images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..config import Config
from ..errors import ConfigError, Interrupted
from ..train import distributed
from .cache import StageCache, disk_full, disk_full_error, tree_bytes
from .fingerprint import code_fingerprint, content_hash

Say = Callable[[str], None]


class Lazy:
    """A value computed on first use (restoring a cached stage must not cost what running it costs)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


@dataclass
class Output:
    """What a stage returns: table rows, JSON-able info for later stages and the report, files it wrote,
    and files of earlier stages it withdraws (no longer consistent with what it wrote)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)


class Context:
    """What stages share during one run: the config, artefacts (maybe lazy), files and every stage's info."""

    def __init__(self, config: Config, say: Say) -> None:
        self.config, self.say = config, say
        self.values: dict[str, Any] = {}
        self.files: dict[str, Path] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def put(self, name: str, value: Any) -> None:
        self.values[name] = value

    def get(self, name: str) -> Any:
        value = self.values[name]
        if isinstance(value, Lazy):
            value = self.values[name] = value.make()
        return value

    def raw(self, name: str) -> Any:
        """The entry as stored (possibly still lazy): for a restore that builds on the previous value."""
        return self.values.get(name)

    def resolve(self, entry: Any) -> Any:
        return entry.make() if isinstance(entry, Lazy) else entry


class Stage:
    """One step of the host pipeline. Subclasses declare ``name``, ``title``, ``reads`` and implement ``run``.

    ``restore`` puts back (lazily) what ``run`` hands to later stages, from the stage's cached output.
    """

    name: str = ""
    title: str = ""
    reads: tuple[str, ...] = ()
    unkeyed: tuple[str, ...] = ()  # keys under ``reads`` that only ``check`` reads: changing them reruns nothing
    distributed: bool = False  # trains in torch: under torchrun every rank runs it (DDP), else rank 0 alone

    def files(self, config: Config) -> dict[str, Path]:
        """Input files or folders read by content (the checkpoint, the data set, a calibration folder)."""
        return {}

    def trains(self, config: Config) -> bool:
        """Whether running it now would train in torch (a ``distributed`` stage that is switched on)."""
        return False

    def run(self, ctx: Context, out: Path) -> Output:
        raise NotImplementedError

    def restore(self, ctx: Context, out: Path, info: dict[str, Any]) -> None:
        """Default: nothing in memory to hand on (later stages read the files)."""

    def check(self, ctx: Context, info: dict[str, Any]) -> None:
        """A verdict on the stage's result (raise to stop the push), made whether it ran or was restored,
        so the result stays cached while the user decides what to change."""


# Paths are keyed by the content they point to (a stage's ``files``), not by how they are spelled.
BY_CONTENT = {"model": {"checkpoint"}, "data": {"path"}, "quantize": {"source"}}


def section_values(config: Config, reads: Sequence[str]) -> dict[str, Any]:
    """The declared deploy.toml sections or keys, as plain data."""
    dumped = config.model_dump(mode="json", exclude={"path": True, **{s: k for s, k in BY_CONTENT.items()}})
    values = {}
    for read in reads:
        section, _, key = read.partition(".")
        values[read] = dumped[section][key] if key else dumped[section]
    return values


# how a result is computed, not what it is: the same stage with 1 or N training processes shares its cache entry
UNKEYED = ("train.nproc",)


def stage_key(stage: Stage, config: Config, previous: str) -> str:
    sections = section_values(config, stage.reads)
    for unkeyed in stage.unkeyed + UNKEYED:
        section, _, key = unkeyed.partition(".")
        sections.get(section, {}).pop(key, None)
    payload = {"stage": stage.name, "previous": previous, "code": code_fingerprint(), "sections": sections,
               "files": {label: _input_hash(config, label, path) for label, path in stage.files(config).items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _input_hash(config: Config, label: str, path: Path) -> str:
    """An input's content hash; an unreadable file is one line naming it (the key is made before any work)."""
    try:
        return content_hash(path)
    except OSError as exc:
        raise ConfigError(f"{config.path.name}: {label}: cannot read {exc.filename or path} "
                          f"({exc.strerror or exc}); fix its permissions or the path") from None


def stage_keys(config: Config, stages: Sequence[Stage]) -> list[str]:
    keys, previous = [], ""
    for stage in stages:
        previous = stage_key(stage, config, previous)
        keys.append(previous)
    return keys


@dataclass
class Run:
    """The outcome of one pipeline run."""

    ctx: Context
    rows: list[dict[str, Any]]
    keys: dict[str, str]
    directories: dict[str, Path]
    ran: list[str]
    timings: dict[str, float]


def run_stages(config: Config, stages: Sequence[Stage], say: Say, force: bool = False,
               cache: Optional[StageCache] = None) -> Run:
    """Run or restore every stage in order; a stage writes into a private directory, published whole."""
    cache = cache or StageCache(config.state_dir / "cache")
    cache.sweep()
    ctx = Context(config, say)
    rows: list[dict[str, Any]] = []
    keys, directories, timings, ran = {}, {}, {}, []
    previous = ""
    for stage in stages:
        key = previous = stage_key(stage, config, previous)
        clock = time.perf_counter()
        with Interrupted.during(stage.title):
            saved, computed = _cached_or_run(stage, ctx, cache, key, force, say)
            directory = cache.directory(stage.name, key)
            if not computed:
                stage.restore(ctx, directory, saved["info"])
            else:
                ran.append(stage.name)
            ctx.info[stage.name] = saved["info"]
            stage.check(ctx, saved["info"])
        for name in saved.get("withdrawn", []):
            ctx.files.pop(name, None)
        ctx.files.update({name: directory / name for name in saved["files"]})
        timings[stage.name] = time.perf_counter() - clock
        for row in saved["rows"]:
            rows.append(dict(row, step=stage.name, status="ran" if computed else "cached",
                             wall_s=timings[stage.name], computed_s=saved["wall_s"]))
        keys[stage.name], directories[stage.name] = key, directory
    return Run(ctx, rows, keys, directories, ran, timings)


def _cached_or_run(stage: Stage, ctx: Context, cache: StageCache, key: str, force: bool,
                   say: Say) -> tuple[dict[str, Any], bool]:
    """The verified cached result, else the stage run now (under the key's lock); True when it ran here."""
    saved = None if force else cache.load(stage.name, key, say)
    if saved is not None:
        return saved, False
    try:
        if distributed.active():
            return _execute_distributed(stage, ctx, cache, key, force, say)
        with cache.lock(stage.name, key):
            saved = None if force else cache.load(stage.name, key, say)  # a concurrent writer may have won
            return (saved, False) if saved is not None else _execute(stage, ctx, cache, key, force)
    except Exception as exc:
        if disk_full(exc, cache.root):
            raise disk_full_error(cache.root, f"the {stage.title} stage", getattr(exc, "written", 0),
                                  _need(cache, stage, ctx, getattr(exc, "written", 0))) from None
        raise


def _need(cache: StageCache, stage: Stage, ctx: Context, written: int) -> int:
    """Room a stage needs, estimated: twice what it wrote before the disk filled or what the stage before
    it wrote (the stages write models of about the same size), at least 16 MB."""
    before = max((tree_bytes(Path(p).parent) for p in ctx.files.values()), default=0)
    return max(2 * written, 2 * before, 16 << 20)


def _execute_distributed(stage: Stage, ctx: Context, cache: StageCache, key: str, force: bool, say: Say
                         ) -> tuple[dict[str, Any], bool]:
    """Under torchrun: a training stage runs on every rank (DDP inside), any other on rank 0 alone; rank 0 alone
    publishes, the others wait for it and then restore its result like a cached stage (computed False)."""
    if distributed.is_main():
        with cache.lock(stage.name, key):
            saved, computed = _execute(stage, ctx, cache, key, force)
    elif stage.distributed:
        work = cache.scratch(stage.name, key)
        try:
            stage.run(ctx, work)  # its collectives pair with rank 0's; its files are rank 0's to keep
        finally:
            shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()
    if distributed.is_main():
        return saved, computed
    return cache.load(stage.name, key, say), False


def _execute(stage: Stage, ctx: Context, cache: StageCache, key: str, force: bool) -> tuple[dict[str, Any], bool]:
    """Run the stage into a scratch directory and publish it; False when another writer's result won."""
    work = cache.scratch(stage.name, key)
    clock = time.perf_counter()
    try:
        output = stage.run(ctx, work)
        result = {"stage": stage.name, "rows": output.rows, "info": output.info, "files": output.files,
                  "withdrawn": output.withdrawn, "wall_s": time.perf_counter() - clock}
        won = cache.publish(stage.name, key, work, result, replace=force)
    except BaseException as exc:
        with contextlib.suppress(AttributeError):  # for the full-disk message
            exc.written = tree_bytes(work)  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
        raise
    return cache.load(stage.name, key) or dict(result, key=key), won
