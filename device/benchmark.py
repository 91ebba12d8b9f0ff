"""The trtexec-style measuring loop: warm up by time, then at least N iterations and D seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping

from .contract.benchmark import CV_WARN_PERCENT, DURATION_S, MIN_ITERATIONS, ROUNDS, WARMUP_S
from .stats import summarize, throughput


@dataclass(frozen=True)
class Plan:
    warmup_s: float = WARMUP_S
    duration_s: float = DURATION_S
    min_iterations: int = MIN_ITERATIONS
    cv_warn_percent: float = CV_WARN_PERCENT

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
    result = {"batch": batch, "iterations": len(timings), "wall_s": wall, "latency_ms": latency,
              "samples_ms": timings}
    result.update(throughput(batch, len(timings), wall))
    if latency["cv_percent"] > plan.cv_warn_percent:
        result["warning"] = ("latency varies (CV {:.1f}% > {}%): the device is busy or throttling; "
                             "figures are less trustworthy").format(latency["cv_percent"], plan.cv_warn_percent)
    return result


MAX_SAMPLES = 2000  # per model and batch size in a report: enough for a latency distribution plot


def round_plan(plan: Plan, rounds: int, first: bool) -> Plan:
    """One of ``rounds`` slices of a plan: the full warm-up before the first slice, a short one after."""
    return Plan(warmup_s=plan.warmup_s if first else min(plan.warmup_s, 0.05),
                duration_s=plan.duration_s / rounds,
                min_iterations=max(1, -(-plan.min_iterations // rounds)), cv_warn_percent=plan.cv_warn_percent)


def merge_rounds(results: List[Dict[str, Any]], plan: Plan) -> Dict[str, Any]:
    """One result from several rounds of the same engine: statistics over every iteration of every round
    (latency from ``samples_ms``, any other per-query series from ``series_ms``).

    A backend that reports no raw samples is summarised by the round whose median is the median round.
    """
    if not all("samples_ms" in r for r in results):
        ordered = sorted(results, key=lambda r: r["latency_ms"]["median"])
        return dict(ordered[len(ordered) // 2], rounds=len(results))
    samples = [t for r in results for t in r["samples_ms"]]
    wall = sum(r["wall_s"] for r in results)
    merged = {k: v for k, v in results[0].items() if k not in ("samples_ms", "series_ms", "warning")}
    latency = summarize(samples)
    merged.update(iterations=len(samples), wall_s=wall, latency_ms=latency, rounds=len(results),
                  samples_ms=thin(samples, MAX_SAMPLES))
    if all("series_ms" in r for r in results):  # further per-query series (trtexec's GPU compute, H2D, ...)
        for key in results[0]["series_ms"]:
            merged[key] = summarize([t for r in results for t in r["series_ms"].get(key, [])])
    merged.update(throughput(results[0]["batch"], len(samples), wall))
    if latency["cv_percent"] > plan.cv_warn_percent:
        merged["warning"] = ("latency varies (CV {:.1f}% > {}%): the device is busy or throttling; "
                             "figures are less trustworthy").format(latency["cv_percent"], plan.cv_warn_percent)
    return merged


def thin(values: List[float], limit: int) -> List[float]:
    """At most ``limit`` values, evenly spaced in time (keeps the distribution's shape)."""
    if len(values) <= limit:
        return list(values)
    step = len(values) / float(limit)
    return [values[int(i * step)] for i in range(limit)]


def interleaved(engines: Dict[str, Callable[[Plan], Dict[str, Any]]], plan: Plan,
                rounds: int = ROUNDS) -> Dict[str, Dict[str, Any]]:
    """Benchmark several engines in alternating rounds (ABBA order), same plan split across the rounds.

    On a shared or throttling device, load and clocks drift over seconds; alternating short rounds
    exposes every engine to the same drift, so their ratio is trustworthy where back-to-back runs are not.
    """
    names = list(engines)
    collected = {name: [] for name in names}  # type: Dict[str, List[Dict[str, Any]]]
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            collected[name].append(engines[name](round_plan(plan, rounds, index < 2)))
    return {name: merge_rounds(collected[name], plan) for name in names}
