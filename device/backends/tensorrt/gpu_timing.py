"""trtexec's measuring loop on CUDA events, for any runtime that enqueues work on a CUDA stream.

Same structure and definitions as trtexec (samples/common/sampleInference.cpp, 8.5 through 11): an input,
a compute and an output stream chained by events; two queries in flight (trtexec's default overlap), so
the next query's copy-in overlaps this one's compute; per query H2D, GPU compute and D2H times from
events and the host time spent enqueuing; "latency" is H2D + compute + D2H (not first event to last);
throughput is queries over the wall time from the first enqueue to the last completion.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

from ...benchmark import Plan
from ...stats import summarize, throughput

DEFINITIONS = {
    "latency_ms": "H2D + GPU compute + D2H of one query (trtexec: Latency)",
    "gpu_compute_ms": "GPU time of the inference work on the compute stream (trtexec: GPU Compute Time)",
    "h2d_ms": "input copy host → device (trtexec: H2D Latency)",
    "d2h_ms": "output copy device → host (trtexec: D2H Latency)",
    "enqueue_ms": "host time to enqueue one query (trtexec: Enqueue Time)",
    "qps": "queries / wall time from the first enqueue to the last completion (trtexec: Throughput)",
    "median": "mean of the two middle values for an even count (trtexec's findMedian)",
}
EVENTS = ("in_start", "in_end", "compute_start", "compute_end", "out_start", "out_end")


class Query:
    """One of the two in-flight slots: its events and host enqueue times."""

    def __init__(self, cuda: Any) -> None:
        self.events = {name: cuda.event() for name in EVENTS}
        self.active = False
        self.enqueue_ms = 0.0


def measure_gpu(cuda: Any, streams: Dict[str, Any], launch: Callable[[Any], None], copy_in: Callable[[Any], None],
                copy_out: Callable[[Any], None], batch: int, plan: Plan,
                clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Warm up for ``plan.warmup_s``, then time at least ``min_iterations`` queries and ``duration_s``."""
    slots = [Query(cuda), Query(cuda)]
    samples: Dict[str, List[float]] = {"latency": [], "h2d": [], "compute": [], "d2h": [], "enqueue": []}

    def enqueue(query: Query) -> None:
        ev, s_in, s_compute, s_out = query.events, streams["input"], streams["compute"], streams["output"]
        cuda.record(ev["in_start"], s_in)
        copy_in(s_in)
        cuda.record(ev["in_end"], s_in)
        cuda.wait_event(s_compute, ev["in_end"])
        cuda.record(ev["compute_start"], s_compute)
        tick = clock()
        launch(s_compute)
        query.enqueue_ms = (clock() - tick) * 1000.0
        cuda.record(ev["compute_end"], s_compute)
        cuda.wait_event(s_out, ev["compute_end"])
        cuda.record(ev["out_start"], s_out)
        copy_out(s_out)
        cuda.record(ev["out_end"], s_out)
        query.active = True

    def collect(query: Query, keep: bool) -> None:
        ev = query.events
        cuda.event_sync(ev["out_end"])
        query.active = False
        if not keep:
            return
        h2d = cuda.elapsed_ms(ev["in_start"], ev["in_end"])
        compute = cuda.elapsed_ms(ev["compute_start"], ev["compute_end"])
        d2h = cuda.elapsed_ms(ev["out_start"], ev["out_end"])
        for key, value in (("h2d", h2d), ("compute", compute), ("d2h", d2h), ("latency", h2d + compute + d2h),
                           ("enqueue", query.enqueue_ms)):
            samples[key].append(value)

    def run(until: Callable[[], bool], keep: bool) -> None:
        index = 0
        while not until():
            enqueue(slots[index])
            index = 1 - index
            if slots[index].active:
                collect(slots[index], keep)
        for query in slots:
            if query.active:
                collect(query, keep)

    start = clock()
    run(lambda: clock() - start >= plan.warmup_s, keep=False)
    begin = clock()
    run(lambda: len(samples["latency"]) + sum(q.active for q in slots) >= plan.min_iterations
        and clock() - begin >= plan.duration_s, keep=True)
    wall = clock() - begin
    result: Dict[str, Any] = {"batch": batch, "iterations": len(samples["latency"]), "wall_s": wall,
                              "latency_ms": summarize(samples["latency"]), "h2d_ms": summarize(samples["h2d"]),
                              "gpu_compute_ms": summarize(samples["compute"]), "d2h_ms": summarize(samples["d2h"]),
                              "enqueue_ms": summarize(samples["enqueue"]), "definitions": dict(DEFINITIONS),
                              "transfers": "included (pinned host memory; separate input/output streams)",
                              # raw times, so rounds of an interleaved benchmark merge into one distribution
                              "samples_ms": list(samples["latency"]),
                              "series_ms": {"gpu_compute_ms": samples["compute"], "h2d_ms": samples["h2d"],
                                            "d2h_ms": samples["d2h"], "enqueue_ms": samples["enqueue"]}}
    result.update(throughput(batch, len(samples["latency"]), wall))
    compute_cv = result["gpu_compute_ms"]["cv_percent"]
    if compute_cv > plan.cv_warn_percent:
        result["warning"] = ("GPU compute time varies (CV {:.1f}% > {}%): clocks are not locked "
                             "(run jetson_clocks) or the device throttles").format(compute_cv, plan.cv_warn_percent)
    return result
