"""``backend = "auto"``: measure the CPU runtimes the device has on the job's model and keep the fastest.

The measuring is interleaved (round-robin over the candidates, several short rounds) so a busy device
slows every candidate alike, at every batch size the project benchmarks: a runtime that wins at batch 32
can be twice as slow at batch 1 (OpenVINO vs ONNX Runtime on a ResNet-20 ×4, measured), so the verdict is
the geometric mean, over the batch sizes, of each candidate's median of per-round medians relative to the
fastest at that size. Only candidates whose engine passed validation may win. The choice, the figures behind it and the
margin go into the report. The decision is pure (``choose``) and unit-tested; the job runner feeds it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

# The crash protocol with the agent: the worker names the runtime it is trying in AUTO_TRYING; when a runtime
# crashes the worker, the agent records it in AUTO_CRASHED and runs the job again without it, up to
# MAX_CRASHED_CANDIDATES times.
AUTO_TRYING = "auto.trying"
AUTO_CRASHED = "auto.crashed.json"
MAX_CRASHED_CANDIDATES = 3

ROUNDS = 5
ROUND_S = 0.15  # per candidate and round; at least MIN_RUNS runs each
MIN_RUNS = 2
WARMUP_RUNS = 2
NOISE_PERCENT = 5.0  # a win by less than this is reported as within noise
PAUSE_S = 0.01  # between candidates: lets one runtime's spinning worker threads go to sleep before the next runs


@dataclass
class Candidate:
    """One runtime tried by ``auto``: what it built from, whether it validated, how fast it ran."""

    backend: str
    model_file: str = ""
    passed: bool = False
    reason: str = ""
    round_medians_ms: List[float] = field(default_factory=list)  # at the batch size ``choose`` is given
    extra: Dict[str, Any] = field(default_factory=dict)
    other_batches: Dict[int, List[float]] = field(default_factory=dict)  # round medians at the other sizes

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.round_medians_ms) if self.round_medians_ms else None

    def median_at(self, batch: Optional[int]) -> float:
        """The median at ``batch`` (None: the main batch size)."""
        return self.median_ms if batch is None else statistics.median(self.other_batches[batch])

    def summary(self) -> Dict[str, Any]:
        return dict(self.extra, backend=self.backend, model_file=self.model_file, passed=self.passed,
                    reason=self.reason, median_ms=self.median_ms, round_medians_ms=self.round_medians_ms,
                    other_batches={str(b): m for b, m in self.other_batches.items()})


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


def choose(candidates: Sequence[Candidate], batch: int) -> Choice:
    """The fastest validated candidate (ties go to the earlier one), and by how much it won."""
    valid = [c for c in candidates if c.passed]
    if len(valid) > 1 and any(c.median_ms is None for c in valid):
        raise ValueError("every validated candidate must be measured before choosing")
    if not valid:
        reasons = "; ".join("{}: {}".format(c.backend, c.reason or "not measured") for c in candidates)
        raise ValueError("no runtime passed validation ({})".format(reasons))
    if len(valid) == 1:
        why = "the only runtime that passed" if len(candidates) > 1 else "the only runtime here"
        return Choice(valid[0].backend, None, None, "auto chose {}: {}".format(valid[0].backend, why))
    others = sorted(set.intersection(*(set(c.other_batches) for c in valid)))  # measured for every candidate
    score = relative_scores(valid, [None] + others)
    winner, second = sorted(valid, key=lambda c: (score[c.backend], candidates.index(c)))[:2]
    speedup = score[second.backend] / score[winner.backend]
    margin = "" if (speedup - 1) * 100 >= NOISE_PERCENT else ", within noise"
    at_main = "at batch {} ({:.3f} vs {:.3f} ms".format(batch, winner.median_ms, second.median_ms)
    if not others:
        message = "auto chose {}: {:.2f}× faster than {} {}, median of {} interleaved rounds{})".format(
            winner.backend, speedup, second.backend, at_main, len(winner.round_medians_ms), margin)
        return Choice(winner.backend, second.backend, speedup, message)
    each = "; ".join("batch {}: {:.2f}×".format(b, second.median_at(None if b == batch else b)
                                                 / winner.median_at(None if b == batch else b))
                     for b in sorted([batch] + others))
    message = "auto chose {}: {:.2f}× faster than {} (geometric mean over batch sizes; {}), medians of {} " \
              "interleaved rounds{}".format(winner.backend, speedup, second.backend, each,
                                            len(winner.round_medians_ms), margin)
    return Choice(winner.backend, second.backend, speedup, message)


def relative_scores(valid: Sequence[Candidate], batches: Sequence[Optional[int]]) -> Dict[str, float]:
    """Per candidate, the geometric mean over ``batches`` of its median divided by the fastest median there."""
    fastest = {b: min(c.median_at(b) for c in valid) for b in batches}
    return {c.backend: math.exp(statistics.mean(math.log(c.median_at(b) / fastest[b]) for b in batches))
            for c in valid}
