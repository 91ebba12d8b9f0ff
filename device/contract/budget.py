"""deploy.toml's ``[budget]``, decided on the device before ``current`` is switched.

The manifest carries the budget; a job that misses it fails with the limits it crossed and the
active model stays. Pure functions: the host uses the same wording when it prints a report.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

LATENCY_LIMITS = (("max_p99_ms", "p99"), ("max_median_ms", "median"))
# A pruning latency target (``prune.target_latency_ms``) is met when the median at its batch is at most this much
# above it; the host writes the limit into the budget (``target_limit``), so a miss keeps the active model.
TARGET_TOLERANCE = 0.15


def target_limit(target_ms: float, batch: int, speedup: Optional[float] = None) -> Dict[str, Any]:
    """The budget entries of a latency target: the median limit at one batch size; for ``target_speedup`` also
    the least speed-up over the baseline timed beside the final engine in the same job, which is what decides
    then: the milliseconds were derived from a baseline timed minutes earlier, and a device whose clocks or
    load changed since would fail (or pass) a model the report shows at the asked speed-up."""
    limit = {"target_median_ms": target_ms * (1 + TARGET_TOLERANCE), "target_batch": batch}
    if speedup is not None:
        limit["target_min_speedup"] = float(speedup) / (1 + TARGET_TOLERANCE)
    return limit


def accuracy_failures(budget: Mapping[str, Any], accuracy: Mapping[str, Any]) -> List[str]:
    """Known before anything is built: the host's measured top-1 of every stage."""
    limit = budget.get("min_host_accuracy")
    values = [float(v) for v in accuracy.values() if isinstance(v, (int, float))]
    if limit is None or not values:
        return []
    worst = min(values)
    if worst < float(limit):
        return ["host top-1 {:.4f} < budget.min_host_accuracy {}".format(worst, limit)]
    return []


def latency_failures(budget: Mapping[str, Any], benchmarks: Sequence[Mapping[str, Any]]) -> List[str]:
    failures = []
    for bench in benchmarks:
        latency = bench.get("latency_ms") or {}
        for key, stat in LATENCY_LIMITS:
            limit = budget.get(key)
            if limit is not None and stat in latency and latency[stat] > float(limit):
                failures.append("batch {}: {} {:.3f} ms > budget.{} {}".format(
                    bench.get("batch"), stat, latency[stat], key, limit))
        if bench.get("batch") == budget.get("target_batch"):
            failures += target_failures(budget, bench)
    return failures


def judged_speedup(asked: Any, bench: Mapping[str, Any]) -> Optional[float]:
    """The figure a speed-up target is judged by: the speed-up over the baseline this job timed beside the engine.
    None for a target in milliseconds, or a job that timed no baseline: milliseconds judge those."""
    speedup = bench.get("speedup")
    return float(speedup) if asked is not None and isinstance(speedup, (int, float)) else None


def target_failures(budget: Mapping[str, Any], bench: Mapping[str, Any]) -> List[str]:
    """A pruning target at its batch size: a speed-up target by the speed-up over the baseline timed beside the
    engine (when this job timed one), else the median against the milliseconds."""
    least = budget.get("target_min_speedup")
    speedup = judged_speedup(least, bench)
    if least is not None and speedup is not None:
        if speedup >= float(least):
            return []
        return ["batch {}: {:.2f}x over the baseline timed beside it misses the pruning target {:.2f}x by more than "
                "{:.0%} (prune.target_speedup; the latency model was off)".format(
                    bench.get("batch"), speedup, float(least) * (1 + TARGET_TOLERANCE), TARGET_TOLERANCE)]
    limit, median = budget.get("target_median_ms"), (bench.get("latency_ms") or {}).get("median", 0.0)
    if limit is None or median <= float(limit):
        return []
    return ["batch {}: median {:.3f} ms misses the pruning target {:.3f} ms by more than {:.0%} "
            "(prune.target_latency_ms/target_speedup; the latency model was off)".format(
                bench.get("batch"), median, float(limit) / (1 + TARGET_TOLERANCE), TARGET_TOLERANCE)]


def budget_failures(budget: Mapping[str, Any], benchmarks: Sequence[Mapping[str, Any]],
                    accuracy: Mapping[str, Any]) -> List[str]:
    return accuracy_failures(budget, accuracy) + latency_failures(budget, benchmarks)


def budget_of(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The manifest's budget, numbers only (anything else is ignored rather than trusted)."""
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict):
        return {}
    return {k: v for k, v in budget.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
