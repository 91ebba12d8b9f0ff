"""``backend = "auto"`` and ``precision = "auto"``: measure the (runtime, precision) candidates the device can
build on the job's model and keep the fastest valid one; both choices are made by the same race.

The measuring is interleaved (round-robin over the candidates, several short rounds) so a busy device
slows every candidate alike, at every batch size the project benchmarks: a runtime that wins at batch 32
can be twice as slow at batch 1 (OpenVINO vs ONNX Runtime on a ResNet-20 ×4, measured), so the verdict is
the geometric mean, over the batch sizes, of each candidate's median of per-round medians relative to the
fastest at that size. Only candidates whose engine passed validation may win, and with an explicit precision
only that precision's: the other precisions are measured to advise (``precision_advice``). The choice, the
figures behind it and the margin go into the report. The decision is pure (``choose``) and unit-tested; the
job runner feeds it.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from ..agent.spool import read_json, write_atomic

# The crash protocol with the agent: the worker names the candidate ("openvino int8") or baseline ("baseline
# openvino") it is building in AUTO_TRYING; when it crashes the worker, the agent records it in AUTO_CRASHED and
# runs the job again without that runtime, up to MAX_CRASHED_CANDIDATES times.
AUTO_TRYING = "auto.trying"
AUTO_CRASHED = "auto.crashed.json"
MAX_CRASHED_CANDIDATES = 4  # a runtime may crash once as a candidate and once building a baseline

ROUNDS = 5
ROUND_S = 0.15  # per candidate and round; at least MIN_RUNS runs each
MIN_RUNS = 2
WARMUP_RUNS = 2
NOISE_PERCENT = 5.0  # a win by less than this is reported as within noise
PAUSE_S = 0.01  # between candidates: lets one runtime's spinning worker threads go to sleep before the next runs


@contextmanager
def trying(job: Any, name: str) -> Iterator[None]:
    """Names ``name`` to the agent while it builds (AUTO_TRYING): if it crashes the worker, the agent records it
    in AUTO_CRASHED and runs the job again without it (``crashed``)."""
    path = job.folder / AUTO_TRYING
    write_atomic(path, name.encode("utf-8"))
    try:
        yield
    finally:
        _remove(path)


def crashed(job: Any) -> Dict[str, str]:
    """What crashed the job's worker in an earlier attempt, by name, with the signal (written by the agent)."""
    return read_json(job.folder / AUTO_CRASHED) or {}


def crashed_runtime(crashes: Mapping[str, str], backend: str) -> Optional[str]:
    """The signal with which ``backend`` crashed the worker in an earlier attempt of this job (as a candidate,
    'openvino int8', or building a baseline, 'baseline openvino'), else None."""
    return next((signal for name, signal in crashes.items() if backend in name.split(" ")), None)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


@dataclass
class Candidate:
    """One (runtime, precision) tried: what it built from, whether it validated, how fast it ran."""

    backend: str
    model_file: str = ""
    passed: bool = False
    reason: str = ""
    round_medians_ms: List[float] = field(default_factory=list)  # at the batch size ``choose`` is given
    extra: Dict[str, Any] = field(default_factory=dict)
    other_batches: Dict[int, List[float]] = field(default_factory=dict)  # round medians at the other sizes
    precision: str = ""  # as built ("" for a runtime-only race)
    executed: str = ""  # what the runtime says the engine runs (OpenVINO's bf16/f16/f32), when it says
    requested: bool = True  # False: another precision than an explicit one, measured only to advise

    @property
    def name(self) -> str:
        """The candidate's key: 'openvino fp16' (the crash protocol and the race know it by this)."""
        return "{} {}".format(self.backend, self.precision) if self.precision else self.backend

    @property
    def shown(self) -> str:
        """'openvino bf16': the runtime and the precision it really ran."""
        return "{} {}".format(self.backend, precision_label(self.precision, self.executed)) if self.precision \
            else self.backend

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.round_medians_ms) if self.round_medians_ms else None

    def median_at(self, batch: Optional[int]) -> float:
        """The median at ``batch`` (None: the main batch size)."""
        return self.median_ms if batch is None else statistics.median(self.other_batches[batch])

    def summary(self) -> Dict[str, Any]:
        return dict(self.extra, backend=self.backend, model_file=self.model_file, passed=self.passed,
                    reason=self.reason, median_ms=self.median_ms, round_medians_ms=self.round_medians_ms,
                    other_batches={str(b): m for b, m in self.other_batches.items()}, precision=self.precision,
                    executed_precision=self.executed, name=self.shown, requested=self.requested)


@dataclass(frozen=True)
class Choice:
    winner: str
    runner_up: Optional[str]
    speedup: Optional[float]  # runner-up median / winner median
    message: str


def interleave(runs: Mapping[str, Callable[[], Any]], rounds: int = ROUNDS, round_s: float = ROUND_S,
               clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> Dict[str, List[float]]:
    """Per candidate, the median latency (ms) of each round; candidates take turns within a round."""
    for run in runs.values():
        for _ in range(WARMUP_RUNS):
            run()
    medians = {name: [] for name in runs}  # type: Dict[str, List[float]]
    for _ in range(rounds):
        for name, run in runs.items():
            sleep(PAUSE_S)
            run()  # untimed: wakes this runtime's threads
            timings = []
            begin = clock()
            while len(timings) < MIN_RUNS or clock() - begin < round_s:
                tick = clock()
                run()
                timings.append((clock() - tick) * 1000.0)
            medians[name].append(statistics.median(timings))
    return medians


def precision_label(precision: str, executed: str = "") -> str:
    """The precision a user reads: what the runtime ran when it says so ('bf16'), else what was built."""
    return {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}.get(executed, precision) if precision == "fp16" else precision


def choose(candidates: Sequence[Candidate], batch: int) -> Choice:
    """The fastest validated candidate that may win (ties go to the earlier one), and by how much it won."""
    valid = [c for c in candidates if c.passed and c.requested]
    kind = "candidate" if any(c.precision for c in candidates) else "runtime"
    if len(valid) > 1 and any(c.median_ms is None for c in valid):
        raise ValueError("every validated candidate must be measured before choosing")
    if not valid:
        reasons = "; ".join("{}: {}".format(c.shown, c.reason or "not measured") for c in candidates if c.requested)
        raise ValueError("no {} passed validation ({})".format(kind, reasons))
    if len(valid) == 1:
        why = "the only {} that passed".format(kind) if sum(c.requested for c in candidates) > 1 \
            else "the only {} here".format(kind)
        return Choice(valid[0].name, None, None, "auto chose {}: {}".format(valid[0].shown, why))
    others = sorted(set.intersection(*(set(c.other_batches) for c in valid)))  # measured for every candidate
    score = relative_scores(valid, [None] + others)
    winner, second = sorted(valid, key=lambda c: (score[c.name], candidates.index(c)))[:2]
    speedup = score[second.name] / score[winner.name]
    margin = "" if (speedup - 1) * 100 >= NOISE_PERCENT else ", within noise"
    at_main = "at batch {} ({:.3f} vs {:.3f} ms".format(batch, winner.median_ms, second.median_ms)
    if not others:
        message = "auto chose {}: {:.2f}× faster than {} {}, median of {} interleaved rounds{})".format(
            winner.shown, speedup, second.shown, at_main, len(winner.round_medians_ms), margin)
        return Choice(winner.name, second.name, speedup, message)
    message = "auto chose {}: {:.2f}× faster than {} (geometric mean over batch sizes; {}), medians of {} " \
              "interleaved rounds{}".format(winner.shown, speedup, second.shown, _each(winner, second, batch, others),
                                            len(winner.round_medians_ms), margin)
    return Choice(winner.name, second.name, speedup, message)


def _each(winner: Candidate, other: Candidate, batch: int, others: Sequence[int]) -> str:
    """'batch 1: 1.20×; batch 32: 1.05×': ``other``'s median over ``winner``'s at each size."""
    return "; ".join("batch {}: {:.2f}×".format(b, other.median_at(None if b == batch else b)
                                                 / winner.median_at(None if b == batch else b))
                     for b in sorted([batch] + list(others)))


def precision_advice(candidates: Sequence[Candidate], chosen: str, batch: int) -> Optional[str]:
    """With an explicit precision: the warning when another validated precision measured faster (by more than
    noise) than the one shipped, naming it and the margin; None when the requested one is the fastest."""
    winner = next(c for c in candidates if c.name == chosen)
    rivals = [c for c in candidates if c.passed and not c.requested and c.median_ms is not None]
    if not rivals or winner.median_ms is None:
        return None
    valid = [winner] + rivals
    others = sorted(set.intersection(*(set(c.other_batches) for c in valid)))
    score = relative_scores(valid, [None] + others)
    best = min(rivals, key=lambda c: score[c.name])
    speedup = score[winner.name] / score[best.name]
    if (speedup - 1) * 100 < NOISE_PERCENT:
        return None
    return ("precision {} was asked for, but {} measured {:.2f}× faster on this device ({}; interleaved rounds) "
            "and passed validation: precision = \"auto\" would ship it".format(
                winner.precision, best.shown, speedup, _each(best, winner, batch, others)))


def relative_scores(valid: Sequence[Candidate], batches: Sequence[Optional[int]]) -> Dict[str, float]:
    """Per candidate, the geometric mean over ``batches`` of its median divided by the fastest median there."""
    fastest = {b: min(c.median_at(b) for c in valid) for b in batches}
    return {c.name: math.exp(statistics.mean(math.log(c.median_at(b) / fastest[b]) for b in batches))
            for c in valid}
