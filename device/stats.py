"""Latency statistics with trtexec's exact definitions, so our figures sit next to trtexec's.

From NVIDIA's trtexec (samples/common/sampleReporting.cpp, the same in 8.5 through 11): the median of an
even count is the mean of the two middle values; percentile p is the value at index
``n - 1 - int((1 - p/100) * n)`` of the sorted timings, computed in 32-bit floats as trtexec does; the
coefficient of variation is the population standard deviation over the mean.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """trtexec's findPercentile: exclude int((1 - p/100) * n) values from the top (float32 arithmetic)."""
    if not sorted_values:
        raise ValueError("no timings")
    count = len(sorted_values)
    exclude = int((np.float32(1) - np.float32(pct) / np.float32(100)) * np.float32(count))
    return float(sorted_values[max(count - 1 - exclude, 0)])


def median(sorted_values: Sequence[float]) -> float:
    """trtexec's findMedian: the middle value, or the mean of the two middle values."""
    if not sorted_values:
        raise ValueError("no timings")
    middle = len(sorted_values) // 2
    if len(sorted_values) % 2:
        return float(sorted_values[middle])
    return (float(sorted_values[middle - 1]) + float(sorted_values[middle])) / 2.0


def summarize(values_ms: Sequence[float]) -> Dict[str, float]:
    """min/mean/median/p90/p95/p99/max and the coefficient of variation (std/mean, in %)."""
    ordered = sorted(float(v) for v in values_ms)
    count = len(ordered)
    mean = sum(ordered) / count
    variance = sum((v - mean) ** 2 for v in ordered) / count
    result = {
        "min": ordered[0],
        "mean": mean,
        "median": median(ordered),
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
