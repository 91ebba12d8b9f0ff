"""deploy.toml's ``[budget]``, decided on the device before ``current`` is switched.

The manifest carries the budget; a job that misses it fails with the limits it crossed and the
active model stays. Pure functions: the host uses the same wording when it prints a report.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

LATENCY_LIMITS = (("max_p99_ms", "p99"), ("max_median_ms", "median"))


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
    return failures


def budget_failures(budget: Mapping[str, Any], benchmarks: Sequence[Mapping[str, Any]],
                    accuracy: Mapping[str, Any]) -> List[str]:
    return accuracy_failures(budget, accuracy) + latency_failures(budget, benchmarks)


def budget_of(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The manifest's budget, numbers only (anything else is ignored rather than trusted)."""
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict):
        return {}
    return {k: v for k, v in budget.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
