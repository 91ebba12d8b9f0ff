"""Rollouts: a fleet pushed in waves (a canary first), a gate between waves, a halt that leaves later waves
untouched, and a record on the host (``.edgekit/rollouts/<id>.json``) from which an interrupted rollout
resumes without pushing a finished device again, and from which a rollout is rolled back.

The host optimises once per rollout (the devices' bundles share its files; each device gets only the blobs
it lacks). A device passes the gate when its job is done, validated and within ``[budget]`` (the agent
decides both before it switches ``current``); the rollout halts after a wave in which the failures so far
exceed ``max_failures``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ...device.contract.protocol import new_job_id
from ..config import Config, host_home
from ..errors import CheckFailed, ConfigError, EdgekitError
from .keys import load_or_create_key
from .session import Pipeline

FleetSink = Callable[[str, dict[str, Any]], None]
Say = Callable[[str], None]
PENDING, PUBLISHING, RUNNING, DONE, FAILED, SKIPPED = "pending", "publishing", "running", "done", "failed", "skipped"
ROLLED_BACK = "rolled back"
UNFINISHED = (PENDING, PUBLISHING, RUNNING)


# -- waves --------------------------------------------------------------------------------------------
def wave_sizes(spec: str, total: int) -> list[int]:
    """Ansible's ``serial`` list: each entry is one wave's size (a count, or a percentage of the fleet rounded
    down, at least 1); the last size repeats until every device is in a wave."""
    entries = [part.strip() for part in spec.split(",")]
    sizes = []
    for entry in entries:
        match = re.fullmatch(r"([0-9]+)(%?)", entry)
        if match is None or int(match.group(1)) == 0 or (match.group(2) and int(match.group(1)) > 100):
            raise ConfigError(f"--waves {spec}: {entry!r} is not a device count or a percentage (1-100%); "
                              "e.g. --waves 1,10%,100%")
        count = int(match.group(1))
        sizes.append(max(1, math.floor(total * count / 100)) if match.group(2) else count)
    waves, placed = [], 0
    while placed < total:
        size = min(sizes[min(len(waves), len(sizes) - 1)], total - placed)
        waves.append(size)
        placed += size
    return waves


def plan_waves(names: list[str], spec: str) -> list[list[str]]:
    """The devices (in name order, so the canary is stable) cut into waves."""
    ordered, waves, start = sorted(names), [], 0
    for size in wave_sizes(spec, len(ordered)):
        waves.append(ordered[start:start + size])
        start += size
    return waves


# -- the record ---------------------------------------------------------------------------------------
class RolloutRecord:
    """A rollout's JSON file, rewritten atomically on every change (threads share it under a lock)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data, self.lock = path, data, threading.Lock()

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def devices(self) -> dict[str, dict[str, Any]]:
        return self.data["devices"]

    def update(self, name: Optional[str] = None, **fields: Any) -> None:
        with self.lock:
            (self.devices[name] if name else self.data).update(fields)
            self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path)

    def failures(self) -> list[str]:
        return [name for name, entry in sorted(self.devices.items()) if entry["state"] == FAILED]


def rollouts_dir(config: Config) -> Path:
    return config.state_dir / "rollouts"


def new_record(config: Config, selector: dict[str, Any], waves: list[list[str]], spec: str, max_parallel: int,
               max_failures: int, optimize_key: str) -> RolloutRecord:
    rollout = new_job_id()
    folder = rollouts_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    devices = {name: {"wave": index + 1, "state": PENDING} for index, wave in enumerate(waves) for name in wave}
    data = {"id": rollout, "selector": selector, "waves_spec": spec, "waves": waves, "max_parallel": max_parallel,
            "max_failures": max_failures, "optimize_key": optimize_key, "status": "running", "started": time.time(),
            "devices": devices, "project": config.project.name}
    record = RolloutRecord(folder / f"{rollout}.json", data)
    record.save()
    return record


def load_record(config: Config, rollout: Optional[str] = None, group: Optional[str] = None) -> RolloutRecord:
    """A rollout by id, else the newest (of ``group`` when given); a missing one is a usage error."""
    folder = rollouts_dir(config)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if rollout is not None:
        paths = [p for p in paths if p.stem == rollout]
        if not paths:
            raise ConfigError(f"no rollout {rollout!r} in {folder}; `edgekit rollout status` lists the newest")
    for path in reversed(paths):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path}: the rollout record is damaged (not JSON); start a new rollout") from None
        if group is None or data.get("selector", {}).get("group") == group:
            return RolloutRecord(path, data)
    raise ConfigError("no rollout on record" + (f" for group {group!r}" if group else "") +
                      "; start one with `edgekit push --group G --waves 1,10%,100%`")


class RolloutBusy:
    """An flock held while a process drives the rollout: a second `resume` is refused, a dead host's is not."""

    def __init__(self, record: RolloutRecord) -> None:
        self.path = record.path.with_suffix(".lock")
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise CheckFailed(f"rollout {record.id} is being driven by another edgekit process; "
                              "`edgekit rollout status` shows its progress") from None

    def __enter__(self) -> "RolloutBusy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


# -- running ------------------------------------------------------------------------------------------
def optimize_key(keys: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(keys.items())).encode()).hexdigest()[:16]


def start_rollout(config: Config, names: list[str], selector: dict[str, Any], spec: str, max_parallel: int,
                  max_failures: int, say: Say, on_event: FleetSink) -> RolloutRecord:
    """Plan the waves, optimise once, write the record, then run it."""
    from ..optimize import optimize

    if config.prune.latency_target:
        raise ConfigError(f"{config.path.name}: a rollout ships one optimised model to every device, but "
                          "prune.target_latency_ms/target_speedup prunes per device against its latency model; use "
                          "prune.ratio for a rollout, or push the devices one by one (`edgekit push DEVICE`)")
    waves = plan_waves(names, spec)
    optimized = optimize(config, say)
    record = new_record(config, selector, waves, spec, max_parallel, max_failures, optimize_key(optimized.keys))
    say(f"rollout {record.id}: {len(names)} device(s) in {len(waves)} wave(s) of "
        f"{', '.join(str(len(w)) for w in waves)}")
    with RolloutBusy(record):
        run_waves(config, record, optimized, say, on_event)
    return record


def resume_rollout(config: Config, rollout: Optional[str], say: Say, on_event: FleetSink) -> RolloutRecord:
    """Continue an interrupted rollout: finished devices are left alone, jobs in flight are followed (not
    published again), the rest pushed; refused when the project changed since it began."""
    from ..optimize import optimize

    record = load_record(config, rollout)
    if record.data["status"] != "running":
        raise ConfigError(f"rollout {record.id} is {record.data['status']}, not interrupted: nothing to resume; "
                          "start a new rollout with `edgekit push --group G --waves ...`")
    optimized = optimize(config, say)
    if optimize_key(optimized.keys) != record.data["optimize_key"]:
        raise ConfigError(f"the project changed since rollout {record.id} began (its optimised model differs); "
                          "resuming would mix two models in one fleet: start a new rollout instead")
    with RolloutBusy(record):
        run_waves(config, record, optimized, say, on_event)
    return record


def run_waves(config: Config, record: RolloutRecord, optimized: Any, say: Say, on_event: FleetSink) -> None:
    """Wave after wave; after each, the gate. A halt marks every device of later waves skipped, untouched."""
    waves = record.data["waves"]
    for index, wave in enumerate(waves, 1):
        todo = [name for name in wave if record.devices[name]["state"] in UNFINISHED]
        if todo:
            say(f"wave {index}/{len(waves)}: {', '.join(todo)}")
            pipeline = Pipeline(config, [name for name in todo if not followed(record.devices[name])],
                                load_or_create_key(host_home()))
            try:
                with ThreadPoolExecutor(max_workers=record.data["max_parallel"]) as pool:
                    list(pool.map(lambda name, ahead=pipeline: push_device(config, record, name, optimized, on_event,
                                                                           ahead),
                                  todo))
            finally:
                pipeline.close()
        failed = record.failures()
        if len(failed) > record.data["max_failures"]:
            later = [name for rest in waves[index:] for name in rest]
            for name in later:
                record.devices[name]["state"] = SKIPPED
            record.update(status="halted", finished=time.time(), halted_after_wave=index,
                          halt=f"{len(failed)} device(s) failed ({', '.join(failed)}), more than --max-failures "
                               f"{record.data['max_failures']}; {len(later)} device(s) of later waves left untouched")
            return
    record.update(status="done", finished=time.time())


def followed(entry: dict[str, Any]) -> bool:
    """A device whose job was published before the host went away: resuming follows it, publishes nothing."""
    return entry["state"] == RUNNING and bool(entry.get("job"))


def push_device(config: Config, record: RolloutRecord, name: str, optimized: Any, on_event: FleetSink,
                pipeline: Optional[Pipeline] = None) -> None:
    """One device of a wave, whatever happens to it: its outcome goes into the record."""
    from .push import budget_failures, push, reattach

    seen: list[float] = []

    def sink(event: dict[str, Any]) -> None:
        if isinstance(event.get("t"), (int, float)):
            seen.append(float(event["t"]))
        on_event(name, event)

    entry = record.devices[name]
    started = time.monotonic()
    try:
        if followed(entry):  # published before the host went away: follow it
            report = reattach(config, name, entry["job"], sink)
        else:
            record.update(name, state=PUBLISHING)
            report, _ = push(config, name, lambda message: None, sink, optimized=optimized, plots=False,
                             on_publish=lambda job: record.update(name, state=RUNNING, job=job),
                             opened=pipeline.take(name) if pipeline is not None else None)
    except EdgekitError as exc:
        report = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken device must not stop the wave
        report = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    over = budget_failures(config, report)
    passed = report.get("status") == "done" and not over and (report.get("validation") or {}).get("passed", True)
    error = report.get("error") or ("over budget: " + "; ".join(over) if over else None)
    record.update(name, state=DONE if passed else FAILED, error=None if passed else (error or "failed"),
                  host_s=round(time.monotonic() - started, 3),
                  job_s=round(seen[-1] - seen[0], 3) if len(seen) > 1 else None, **outcome(report))


def outcome(report: dict[str, Any]) -> dict[str, Any]:
    """What the fleet table and a rollback need from a device's report."""
    benches = sorted(report.get("benchmarks") or [], key=lambda b: b.get("batch", 0))
    first = benches[0] if benches else {}
    previous = report.get("previous")
    fields = {"backend": report.get("backend"), "precision": report.get("precision"),
              "p50_ms": (first.get("latency_ms") or {}).get("median"), "speedup": first.get("speedup"),
              "engine_key": report.get("engine_key"), "previous": os.path.basename(previous) if previous else None,
              "uploaded_bytes": report.get("uploaded_bytes")}
    if report.get("job"):
        fields["job"] = report["job"]
    return fields


# -- rolling back -------------------------------------------------------------------------------------
def rollback_targets(record: RolloutRecord, wave: Optional[int]) -> dict[str, Optional[str]]:
    """The devices the rollout switched (in ``wave`` when given), each with the engine it served before."""
    return {name: entry.get("previous") for name, entry in sorted(record.devices.items())
            if entry["state"] == DONE and (wave is None or entry["wave"] == wave)}


def rollback_fleet(config: Config, names: list[str], group: Optional[str], rollout: Optional[str],
                   wave: Optional[int], max_parallel: int, on_event: FleetSink
                   ) -> tuple[Optional[RolloutRecord], dict[str, dict[str, Any]]]:
    """``edgekit rollback``: a rollout's switched devices back to what they served before it (the named rollout,
    else the group's newest); without a rollout on record, each device to its agent's ``previous``."""
    record = None
    if rollout is not None or group is not None:
        try:
            record = load_record(config, rollout, None if rollout else group)
        except ConfigError:
            if rollout is not None or wave is not None:
                raise
    if record is None:
        return None, roll_back(config, {name: None for name in names}, max_parallel, on_event)
    targets = {name: to for name, to in rollback_targets(record, wave).items() if name in names}
    if not targets:
        raise ConfigError(f"rollout {record.id} has no switched device to roll back" +
                          (f" in wave {wave}" if wave else "") + " (failed and skipped devices were never changed)")
    outcome = roll_back(config, targets, max_parallel, on_event, record)
    if wave is None:
        record.update(status="rolled back")
    return record, outcome


def roll_back(config: Config, targets: dict[str, Optional[str]], max_parallel: int, on_event: FleetSink,
              record: Optional[RolloutRecord] = None) -> dict[str, dict[str, Any]]:
    """Every target back to its engine (None: the agent's ``previous``); a device that served nothing before
    the rollout, or the same engine, is left as it is and says so."""
    from .rollback import roll_back_device

    def one(name: str) -> dict[str, Any]:
        to = targets[name]
        entry = record.devices[name] if record else {}
        if record is not None and (to is None or to == entry.get("engine_key")):
            reason = "served nothing before the rollout" if to is None else "the rollout did not change its engine"
            return {"status": "unchanged", "error": reason}
        try:
            report = roll_back_device(config, name, to, lambda event: on_event(name, event))
        except EdgekitError as exc:
            report = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one broken device must not stop the others
            report = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if record is not None:
            fields = {"state": ROLLED_BACK, "error": None, "engine_key": report.get("engine_key"),
                      "backend": report.get("backend"), "precision": report.get("precision"),
                      "p50_ms": None, "speedup": None} if report.get("status") == "done" else \
                {"error": f"rollback failed: {report.get('error')}"}
            record.update(name, **fields)
        return report

    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        return dict(zip(targets, pool.map(one, list(targets))))


def iter_rows(record: RolloutRecord) -> Iterator[dict[str, Any]]:
    """The fleet table: one row per device, in wave order."""
    for name, entry in sorted(record.devices.items(), key=lambda item: (item[1]["wave"], item[0])):
        yield {"device": name, **{k: entry.get(k) for k in ("wave", "state", "backend", "precision", "p50_ms",
                                                             "speedup", "error", "job")}}
