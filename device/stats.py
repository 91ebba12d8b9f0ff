"""Latency statistics as trtexec reports them, from a list of per-iteration timings."""

from __future__ import annotations

import math
from typing import Dict, Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (what trtexec uses): the smallest value with ``pct``% at or below it."""
    if not sorted_values:
        raise ValueError("no timings")
    rank = max(1, int(math.ceil(pct / 100.0 * len(sorted_values))))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(values_ms: Sequence[float]) -> Dict[str, float]:
    """min/mean/median/p90/p95/p99/max and the coefficient of variation (std/mean, in %)."""
    ordered = sorted(float(v) for v in values_ms)
    count = len(ordered)
    mean = sum(ordered) / count
    variance = sum((v - mean) ** 2 for v in ordered) / count
    result = {
        "min": ordered[0],
        "mean": mean,
        "median": percentile(ordered, 50),
        "max": ordered[-1],
        "cv_percent": (math.sqrt(variance) / mean * 100.0) if mean > 0 else 0.0,
    }
    for pct in PERCENTILES[1:]:
        result["p{}".format(pct)] = percentile(ordered, pct)
    return result


def throughput(batch: int, iterations: int, wall_seconds: float) -> Dict[str, float]:
    """Queries (batches) per second and images per second over the measured wall time."""
    qps = iterations / wall_seconds if wall_seconds > 0 else 0.0
    return {"qps": qps, "images_per_s": qps * batch}
