"""Collect activation statistics once, on the FP32 ONNX graph, with ONNX Runtime.

Why not ONNX Runtime's own calibrators: its histogram calibrators keep every batch's activations in
memory until the end (gigabytes for 512 images of a ResNet), entropy and percentile each need their own
pass, and its KL search is not TensorRT's. This collector streams: one pass, every float tensor, a
running |x| histogram whose range doubles when a larger value arrives (doubling merges bins exactly),
from which every method's threshold is computed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from .methods import choose_amax
from .table import CalibrationTable, TensorRange

BINS = 2048
Progress = Callable[[int], None]


@dataclass
class TensorStats:
    lowest: float
    highest: float
    absmax: float
    edge: float
    counts: np.ndarray

    def add(self, values: np.ndarray) -> None:
        lo, hi = float(values.min()), float(values.max())
        self.lowest, self.highest = min(self.lowest, lo), max(self.highest, hi)
        peak = max(abs(lo), abs(hi))
        self.absmax = max(self.absmax, peak)
        if peak > self.edge:
            self._grow(peak)
        index = np.minimum((np.abs(values.ravel()) * (BINS / self.edge)).astype(np.int64), BINS - 1)
        self.counts += np.bincount(index, minlength=BINS)

    def _grow(self, peak: float) -> None:
        """Double the range until ``peak`` fits; each doubling merges neighbouring bins (exact)."""
        if self.edge <= 0:
            self.edge = peak
            return
        while self.edge < peak:
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1), np.zeros(BINS // 2, np.int64)])
            self.edge *= 2


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """The graph input(s) and every float node output (what TensorRT's cache and both INT8 models need)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape"):
            continue
        names += [out for out in node.output if out and types.get(out) == onnx.TensorProto.FLOAT]
    return list(dict.fromkeys(names))


def _augmented(model: onnx.ModelProto, names: list[str]) -> bytes:
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    present = {o.name for o in graph.graph.output}
    for name in names:
        if name not in present:
            graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return graph.SerializeToString()


@dataclass
class Collected:
    stats: dict[str, TensorStats]
    images: int
    inputs: list[str]


def collect(model_path: Path, batches: Iterable[np.ndarray], progress: Progress | None = None,
            threads: int = 0) -> Collected:
    """Run every batch once and accumulate per-tensor statistics."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    names = float_tensors(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # No graph rewrites: the tensors we ask for must be the ones in the file.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(_augmented(model, names), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    stats: dict[str, TensorStats] = {}
    images = 0
    for batch in batches:
        outputs = session.run(names, {input_name: batch})
        for name, values in zip(names, outputs):
            if name not in stats:
                stats[name] = TensorStats(np.inf, -np.inf, 0.0, 0.0, np.zeros(BINS, np.int64))
            stats[name].add(values)
        images += len(batch)
        if progress:
            progress(len(batch))
    if not images:
        raise ValueError("no calibration images")
    return Collected(stats, images, [input_name])


def make_table(collected: Collected, method: str, percentile: float = 99.99) -> CalibrationTable:
    """Apply one method to the collected statistics.

    Graph inputs keep their full observed range whatever the method: they are preprocessed images with
    a known range, and clipping them (entropy clips a digit image at its background level) saturates
    the very pixels that carry the information.
    """
    ranges = {}
    for name, s in collected.stats.items():
        if name in collected.inputs or s.edge <= 0:
            amax = s.absmax
        else:
            amax = min(choose_amax(method, s.counts, s.edge, s.absmax, percentile), s.absmax)
        ranges[name] = TensorRange(amax=float(amax), lowest=s.lowest, highest=s.highest)
    return CalibrationTable(method, collected.images, ranges, percentile if method == "percentile" else None)
