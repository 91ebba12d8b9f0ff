"""Collect activation statistics once, on the FP32 ONNX graph, with ONNX Runtime.

Why not ONNX Runtime's own calibrators: its histogram calibrators keep every batch's activations in
memory until the end (gigabytes for 512 images of a ResNet), entropy and percentile each need their own
pass, and its KL search is not TensorRT's. This collector streams: one pass, every float tensor, a
running |x| histogram whose range doubles when a larger value arrives (doubling merges bins exactly),
from which every method's threshold is computed afterwards.

Min and max are computed exactly inside the graph (ReduceMin/ReduceMax); the histogram is built from
every third element (a flattened stride-3 slice, co-prime with the power-of-two shapes of CNN tensors),
which keeps the shape of the distribution while copying and binning a third of the data.
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
SAMPLE_STEP = 3
Progress = Callable[[int], None]


@dataclass
class TensorStats:
    lowest: float
    highest: float
    absmax: float
    edge: float
    counts: np.ndarray

    def add(self, values: np.ndarray, lo: float, hi: float) -> None:
        """``values``: a sample of the tensor; ``lo``/``hi``: its exact extremes."""
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


def _augmented(model: onnx.ModelProto, names: list[str], step: int) -> tuple[bytes, list[str]]:
    """Add, per tensor, outputs for its exact min and max and a strided sample of its values."""
    from onnx import helper, numpy_helper

    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    constants = {"flat": np.array([-1], np.int64), "start": np.array([0], np.int64),
                 "end": np.array([np.iinfo(np.int64).max], np.int64), "axis": np.array([0], np.int64),
                 "step": np.array([step], np.int64)}
    for key, value in constants.items():
        graph.graph.initializer.append(numpy_helper.from_array(value, f"edgekit_calib_{key}"))
    outputs = []
    for index, name in enumerate(names):
        tag = f"edgekit_calib_{index}"
        graph.graph.node.extend([
            helper.make_node("ReduceMin", [name], [f"{tag}_min"], keepdims=0),
            helper.make_node("ReduceMax", [name], [f"{tag}_max"], keepdims=0),
            helper.make_node("Reshape", [name, "edgekit_calib_flat"], [f"{tag}_flat"]),
            helper.make_node("Slice", [f"{tag}_flat", "edgekit_calib_start", "edgekit_calib_end",
                                       "edgekit_calib_axis", "edgekit_calib_step"], [f"{tag}_sample"]),
        ])
        for suffix in ("min", "max", "sample"):
            graph.graph.output.append(helper.make_empty_tensor_value_info(f"{tag}_{suffix}"))
            outputs.append(f"{tag}_{suffix}")
    return graph.SerializeToString(), outputs


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
    augmented, outputs = _augmented(model, names, SAMPLE_STEP)
    session = ort.InferenceSession(augmented, sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    stats: dict[str, TensorStats] = {}
    images = 0
    for batch in batches:
        results = session.run(outputs, {input_name: batch})
        for index, name in enumerate(names):
            low, high, sample = results[3 * index:3 * index + 3]
            if name not in stats:
                stats[name] = TensorStats(np.inf, -np.inf, 0.0, 0.0, np.zeros(BINS, np.int64))
            stats[name].add(sample, float(low), float(high))
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
