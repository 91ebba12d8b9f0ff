"""``backend = "auto"`` and ``precision = "auto"``: measure the (runtime, precision) candidates the device can
build on the job's model and keep the fastest valid one; both choices are made by the same race.

The measuring is interleaved (round-robin over the candidates, several short rounds) so a busy device
slows every candidate alike, at every batch size the project benchmarks. The rule (``choose``) never ships a
file slower than another validated one where that can be avoided: a candidate counts as slower than the
fastest at a batch size only beyond the measurement's noise (``slower``: by more than NOISE_PERCENT and in
(nearly) every interleaved round, round by round); the winner is a candidate slower than the fastest at no
batch size, the fastest of those at the primary batch size. When none is (A fastest at batch 1, B at batch 32:
a runtime that wins at batch 32 can be twice as slow at batch 1, OpenVINO vs ONNX Runtime on a ResNet-20 ×4,
measured), the primary batch size decides (the manifest's first, i.e. smallest, of ``input.batch_sizes``) and
the one-line reason says at which batch size the other file would have won and by how much. Only candidates
whose engine passed validation may win, and with an explicit precision only that precision's: the other
precisions are measured to advise (``precision_advice``). The choice, the figures behind it and the margin go
into the report. The decision is pure (``choose``) and unit-tested; the job runner feeds it.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..agent.spool import read_json, write_atomic

# The crash protocol with the agent: the worker names the candidate ("openvino int8") or baseline ("baseline
# openvino") it is building in AUTO_TRYING; when it crashes the worker, the agent records it in AUTO_CRASHED and
# runs the job again without that runtime, up to MAX_CRASHED_CANDIDATES times.
AUTO_TRYING = "auto.trying"
AUTO_CRASHED = "auto.crashed.json"
MAX_CRASHED_CANDIDATES = 4  # a runtime may crash once as a candidate and once building a baseline

ROUNDS = 5
ROUND_S = 0.15  # per candidate and round; at least MIN_RUNS runs each
MIN_RUNS = 5  # a round's median of 2 runs (batch 32 on a busy CPU) reordered candidates within 20 % run to run
WARMUP_RUNS = 2
NOISE_PERCENT = 5.0  # a win by less than this is within noise, however steady the rounds
NOISE_QUANTILE = 0.1  # slower beyond noise: slower in all but this share of the interleaved rounds
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

    def summary(self) -> Dict[str, Any]:
        return dict(self.extra, backend=self.backend, model_file=self.model_file, passed=self.passed,
                    reason=self.reason, median_ms=self.median_ms, round_medians_ms=self.round_medians_ms,
                    other_batches={str(b): m for b, m in self.other_batches.items()}, precision=self.precision,
                    executed_precision=self.executed, name=self.shown, requested=self.requested)


@dataclass(frozen=True)
class Choice:
    winner: str
    runner_up: Optional[str]
    speedup: Optional[float]  # runner-up median / winner median, at the primary batch size
    message: str
    primary: Optional[int] = None  # the batch size that decides a crossing (and the speed-up above)
    crossed: Dict[int, str] = field(default_factory=dict)  # batch size → the candidate that won there instead


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


def primary_batch(manifest: Any) -> int:
    """The batch size that decides when no candidate is the fastest at every size: the manifest's first
    (``input.batch_sizes`` sorted, so the smallest: an edge device mostly answers one request at a time)."""
    return int(manifest.batch_sizes[0])


def slower(rounds: Sequence[float], fastest: Sequence[float]) -> bool:
    """Whether one candidate's per-round medians at a batch size are slower than the fastest's beyond the
    measurement's noise: by more than NOISE_PERCENT (median of the round medians), and in all but NOISE_QUANTILE
    of the rounds compared round by round (interleaved, so a load burst hits both in the same round; a spread
    wider than the gap makes some rounds tie or reverse). Unpaired rounds: the ranges must not overlap."""
    if (statistics.median(rounds) / statistics.median(fastest) - 1) * 100 <= NOISE_PERCENT:
        return False
    if len(rounds) != len(fastest):
        return min(rounds) > max(fastest)
    ratios = sorted(a / b for a, b in zip(rounds, fastest))
    return ratios[int(len(ratios) * NOISE_QUANTILE)] > 1.0


def choose(candidates: Sequence[Candidate], batch: int, primary: Optional[int] = None) -> Choice:
    """The validated candidate that may win and is slower than the fastest at no batch size (beyond noise), the
    fastest of those at ``primary``; when every one is slower somewhere, the fastest at ``primary`` (default:
    ``batch``, the size of ``round_medians_ms``), naming where the other would have won. Ties go to the earlier."""
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
    sizes = _sizes(valid, batch)
    primary = primary if primary in sizes else batch
    at = _Rounds(batch, candidates)
    fastest = {b: min(valid, key=lambda c, b=b: at.key(c, b)) for b in sizes}
    behind = {c.name: [b for b in sizes if c is not fastest[b] and slower(at.rounds(c, b), at.rounds(fastest[b], b))]
              for c in valid}
    clean = [c for c in valid if not behind[c.name]]
    winner = min(clean or valid, key=lambda c: at.key(c, primary))
    crossed = {b: fastest[b] for b in behind[winner.name]}
    second = next(iter(crossed.values()), None) or min((c for c in valid if c is not winner),
                                                      key=lambda c: at.key(c, primary))
    speedup = at.median(second, primary) / at.median(winner, primary)
    rounds = "median{} of {} interleaved rounds".format("s" if len(sizes) > 1 else "", len(winner.round_medians_ms))
    if crossed:
        lost = "; ".join("{} would have won at batch {} by {:.2f}× ({:.3f} vs {:.3f} ms)".format(
            other.shown, b, at.median(winner, b) / at.median(other, b), at.median(other, b), at.median(winner, b))
            for b, other in crossed.items())
        message = "auto chose {}: the fastest at batch {}, the primary batch size ({:.2f}× faster than {}, {:.3f} vs " \
                  "{:.3f} ms); no candidate was the fastest at every batch size: {}; {}".format(
                      winner.shown, primary, speedup, second.shown, at.median(winner, primary),
                      at.median(second, primary), lost, rounds)
        return Choice(winner.name, second.name, speedup, message, primary, {b: c.name for b, c in crossed.items()})
    margin = "" if slower(at.rounds(second, primary), at.rounds(winner, primary)) else ", within noise"
    where = "at batch {} ({:.3f} vs {:.3f} ms".format(primary, at.median(winner, primary), at.median(second, primary))
    if len(sizes) == 1:
        message = "auto chose {}: {:.2f}× faster than {} {}, {}{})".format(
            winner.shown, speedup, second.shown, where, rounds, margin)
    else:
        message = "auto chose {}: {:.2f}× faster than {} {}, the primary batch size; {}), and slower than none at " \
                  "any batch size beyond noise; {}{}".format(winner.shown, speedup, second.shown, where,
                                                             _each(winner, second, at, sizes), rounds, margin)
    return Choice(winner.name, second.name, speedup, message, primary)


@dataclass(frozen=True)
class Serving:
    """``precision = "auto"``'s answer: per batch size, the candidate that serves it and why (one line each)."""

    served: Dict[int, str]  # batch size → candidate name
    reasons: Dict[int, str]  # batch size → why that candidate serves it
    message: str
    winner: str  # the candidate serving the primary batch size (the report's engine)
    runner_up: Optional[str] = None
    speedup: Optional[float] = None  # runner-up median / winner median at the primary batch size

    @property
    def files(self) -> List[str]:
        """The distinct candidates served, the primary batch size's first."""
        return list(dict.fromkeys([self.winner] + [self.served[b] for b in sorted(self.served)]))


def serve(candidates: Sequence[Candidate], sizes: Sequence[int], batch: int) -> Serving:
    """Per batch size in ``sizes``, the validated candidate that serves it: one whose median there is within
    NOISE_PERCENT of the fastest's (so the engine serving a batch size is never slower than the fastest validated
    alternative beyond noise); among those, the one that ties at the most batch sizes (fewest engines: one file
    when one is as fast everywhere), then the fastest at the primary batch size (the smallest). Medians of the
    interleaved rounds, compared with a fixed margin, so a gap that noise could reverse never decides alone.
    ``batch`` is the size ``round_medians_ms`` holds; a candidate failing validation is never served."""
    valid = [c for c in candidates if c.passed and c.requested]
    kind = "candidate" if any(c.precision for c in candidates) else "runtime"
    if not valid:
        reasons = "; ".join("{}: {}".format(c.shown, c.reason or "not measured") for c in candidates if c.requested)
        raise ValueError("no {} passed validation ({})".format(kind, reasons))
    sizes = sorted(set(sizes))
    if len(valid) == 1:
        why = "the only {} that passed".format(kind) if sum(c.requested for c in candidates) > 1 \
            else "the only {} here".format(kind)
        return Serving({b: valid[0].name for b in sizes}, {b: "{}: {}".format(_served(valid[0]), why) for b in sizes},
                       "auto chose {}: {}".format(valid[0].shown, why), valid[0].name)
    if any(c.median_ms is None for c in valid) or set(sizes) - set(_sizes(valid, batch)):
        raise ValueError("every validated candidate must be measured at every batch size before choosing")
    at = _Rounds(batch, candidates)
    fastest = _fastest(valid, sizes, at)
    ties = {b: {c.name for c in valid if at.median(c, b) <= at.median(fastest[b], b) * (1 + NOISE_PERCENT / 100)}
            for b in sizes}
    order = sorted(valid, key=lambda c: (-sum(c.name in ties[b] for b in sizes), at.key(c, sizes[0])))
    served = {b: next(c for c in order if c.name in ties[b]) for b in sizes}
    for b in sizes:  # a tie only wins to save an engine: alone at its batch size, the fastest serves it
        if all(served[o] is not served[b] for o in sizes if o != b):
            served[b] = fastest[b]
    reasons = {b: _serve_reason(served[b], fastest[b], valid, b, at, served) for b in sizes}
    primary = sizes[0]
    winner = served[primary]
    second = min((c for c in valid if c is not winner), key=lambda c: at.key(c, primary))
    rounds = "medians of {} interleaved rounds".format(len(winner.round_medians_ms))
    users = {served[b].name for b in sizes}
    if len(users) == 1:
        message = "auto chose {}: it serves every batch size ({}); {}".format(
            winner.shown, "; ".join("batch {}: {}".format(b, reasons[b].split(": ", 1)[1]) for b in sizes), rounds)
    else:
        message = "auto serves {}: no candidate was within {:g}% of the fastest at every batch size; {}".format(
            ", ".join("batch {} with {}".format(b, served[b].shown) for b in sizes), NOISE_PERCENT, rounds)
    return Serving({b: c.name for b, c in served.items()}, reasons, message, winner.name, second.name,
                   at.median(second, primary) / at.median(winner, primary))


def fastest_per_batch(candidates: Sequence[Candidate], sizes: Sequence[int], batch: int) -> Dict[int, str]:
    """Per batch size in ``sizes``, the validated candidate with the lowest median of the interleaved rounds there
    (ties: the earlier), with no margin: the report's baseline at each batch size (``jobs.baseline``), the best a
    user could run there. ``serve``'s engine-saving tie rule is not applied: it may keep a file up to
    NOISE_PERCENT slower, which for a baseline would flatter the speed-up by as much."""
    valid = [c for c in candidates if c.passed and c.requested]
    sizes = sorted(set(sizes))
    if not valid:
        raise ValueError("nothing measured passed")
    if len(valid) > 1 and (any(c.median_ms is None for c in valid) or set(sizes) - set(_sizes(valid, batch))):
        raise ValueError("every candidate must be measured at every batch size before choosing")
    if len(valid) == 1:
        return {b: valid[0].name for b in sizes}
    return {b: c.name for b, c in _fastest(valid, sizes, _Rounds(batch, candidates)).items()}


def _fastest(valid: Sequence[Candidate], sizes: Sequence[int], at: _Rounds) -> Dict[int, Candidate]:
    return {b: min(valid, key=lambda c, b=b: at.key(c, b)) for b in sizes}


def _served(candidate: Candidate) -> str:
    """'openvino int8 (model.int8.cpu.onnx)'."""
    return "{} ({})".format(candidate.shown, candidate.model_file) if candidate.model_file else candidate.shown


def _serve_reason(chosen: Candidate, fastest: Candidate, valid: Sequence[Candidate], size: int, at: _Rounds,
                  served: Mapping[int, Candidate]) -> str:
    """Why ``chosen`` serves ``size``, in one line: the fastest (by how much over the next), or within noise of
    it and serving other batch sizes too (one engine fewer)."""
    if chosen is fastest:
        second = min((c for c in valid if c is not chosen), key=lambda c: at.key(c, size))
        gap = at.median(second, size) / at.median(chosen, size)
        return "{}: the fastest at batch {}, {:.2f}× faster than {} ({:.3f} vs {:.3f} ms){}".format(
            _served(chosen), size, gap, second.shown, at.median(chosen, size), at.median(second, size),
            ", within noise" if gap <= 1 + NOISE_PERCENT / 100 else "")
    others = [b for b, c in served.items() if c is chosen and b != size]
    return "{}: within {:g}% of the fastest at batch {}, {} ({:.3f} vs {:.3f} ms), and it serves batch {} too " \
           "(one engine fewer)".format(_served(chosen), NOISE_PERCENT, size, fastest.shown, at.median(chosen, size),
                                       at.median(fastest, size), ", ".join(str(b) for b in others))


def _sizes(valid: Sequence[Candidate], batch: int) -> List[int]:
    """The batch sizes measured for every candidate (``batch``: that of ``round_medians_ms``)."""
    return sorted({batch}.union(*(set(c.other_batches) for c in valid)).intersection(
        *({batch}.union(c.other_batches) for c in valid)))


def median_at(candidate: Candidate, size: int, batch: int) -> float:
    """A raced candidate's median at batch ``size`` (``round_medians_ms`` holds the rounds at ``batch``)."""
    return statistics.median(candidate.round_medians_ms if size == batch else candidate.other_batches[size])


class _Rounds:
    """A candidate's round medians at a batch size (``round_medians_ms`` holds those at ``batch``)."""

    def __init__(self, batch: int, order: Sequence[Candidate]) -> None:
        self.batch, self.order = batch, list(order)

    def rounds(self, candidate: Candidate, size: int) -> List[float]:
        return candidate.round_medians_ms if size == self.batch else candidate.other_batches[size]

    def median(self, candidate: Candidate, size: int) -> float:
        return median_at(candidate, size, self.batch)

    def key(self, candidate: Candidate, size: int) -> Tuple[float, int]:
        """Fastest first; on a tie, the earlier candidate."""
        return self.median(candidate, size), self.order.index(candidate)


def _each(winner: Candidate, other: Candidate, at: _Rounds, sizes: Sequence[int]) -> str:
    """'batch 1: 1.20×; batch 32: 1.05×': ``other``'s median over ``winner``'s at each size."""
    return "; ".join("batch {}: {:.2f}×".format(b, at.median(other, b) / at.median(winner, b)) for b in sizes)


def precision_advice(candidates: Sequence[Candidate], chosen: str, batch: int,
                     primary: Optional[int] = None) -> Optional[str]:
    """With an explicit precision: the warning when ``precision = "auto"`` would have shipped another validated
    precision (``choose``'s rule over all of them) that is faster beyond noise at the primary batch size, naming
    it and the margins; None when the requested one is what auto would ship, or within noise of it."""
    winner = next(c for c in candidates if c.name == chosen)
    rivals = [c for c in candidates if c.passed and not c.requested and c.median_ms is not None]
    if not rivals or winner.median_ms is None:
        return None
    everyone = [replace(c, requested=True) for c in [winner] + rivals]
    choice = choose(everyone, batch, primary)
    best = next((c for c in everyone if c.name == choice.winner), everyone[0])
    at = _Rounds(batch, everyone)
    primary = choice.primary if choice.primary is not None else batch
    if best is everyone[0] or not slower(at.rounds(everyone[0], primary), at.rounds(best, primary)):
        return None
    sizes = _sizes(everyone, batch)
    return ("precision {} was asked for, but {} measured {:.2f}× faster at batch {} on this device ({}; interleaved "
            "rounds) and passed validation: precision = \"auto\" would ship it".format(
                winner.precision, best.shown, at.median(everyone[0], primary) / at.median(best, primary), primary,
                _each(best, everyone[0], at, sizes)))
