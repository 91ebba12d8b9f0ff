"""The trtexec-style measuring loop: warm up by time, then at least N iterations and D seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

from .stats import summarize, throughput


@dataclass(frozen=True)
class Plan:
    warmup_s: float = 0.2
    duration_s: float = 3.0
    min_iterations: int = 10
    cv_warn_percent: float = 10.0

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any]) -> Plan:
        fields = {k: data[k] for k in ("warmup_s", "duration_s", "min_iterations", "cv_warn_percent") if k in data}
        return cls(**fields)


def measure(run: Callable[[], None], batch: int, plan: Plan,
            clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Time ``run`` (one batch, end to end on the host) and summarise like trtexec."""
    start = clock()
    while clock() - start < plan.warmup_s:
        run()
    timings = []
    begin = clock()
    while len(timings) < plan.min_iterations or clock() - begin < plan.duration_s:
        tick = clock()
        run()
        timings.append((clock() - tick) * 1000.0)
    wall = clock() - begin
    latency = summarize(timings)
    result = {"batch": batch, "iterations": len(timings), "wall_s": wall, "latency_ms": latency}
    result.update(throughput(batch, len(timings), wall))
    if latency["cv_percent"] > plan.cv_warn_percent:
        result["warning"] = ("latency varies (CV {:.1f}% > {}%): the device is busy or throttling; "
                             "figures are less trustworthy").format(latency["cv_percent"], plan.cv_warn_percent)
    return result
