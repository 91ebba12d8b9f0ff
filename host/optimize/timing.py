"""Quick host-side ONNX Runtime latency for the stage table (the device's benchmark is the real one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...device.benchmark import Plan, measure
from .export.onnx_export import onnx_session

STAGE_PLAN = Plan(warmup_s=0.1, duration_s=0.5, min_iterations=10)


def onnx_latency(path: Path, shape: list[int], batches: tuple[int, ...] = (1, 32)) -> dict[int, float]:
    """Median ms per batch with all graph optimisations, as the device's ONNX Runtime backend runs it."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    result = {}
    for batch in batches:
        data = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        feed = {name: data}
        result[batch] = measure(lambda feed=feed: session.run(None, feed), batch, STAGE_PLAN)["latency_ms"]["median"]
    return result
