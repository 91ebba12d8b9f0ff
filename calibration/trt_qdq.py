"""Write ``model.int8.qdq.onnx``: explicit INT8 in the form TensorRT wants.

- symmetric int8, zero-point 0 everywhere; activations per-tensor (scale = amax/127 from the table);
- weights per-channel on the output-channel axis (axis 0 for Conv and transposed Gemm, axis 1 for a
  one-group ConvTranspose, per-tensor for a grouped one: see ``weight_axis``), Q→DQ on the float weight
  so every TensorRT version folds it;
- biases stay float (TensorRT quantises them itself);
- one Q/DQ pair per activation tensor, shared by its quantised consumers;
- an Add fed by an INT8 Conv keeps that input unquantised (TensorRT fuses Conv+Add) and quantises
  the residual input, as NVIDIA's Q/DQ placement guide recommends; other Adds stay in float.

ONNX Runtime's QDQ quantiser puts Q/DQ on every input of an Add, which blocks that fusion; hence this
small writer of our own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .table import CalibrationTable

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_axis(node: onnx.NodeProto) -> int | None:
    """The output-channel axis of the node's weight; None where only per-tensor is valid.

    ConvTranspose weights are (C_in, C_out/group, k...): NVIDIA's own Q/DQ toolkit for TensorRT
    (pytorch-quantization, QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL) quantises them per
    channel on axis 1, the output channels — which holds only with one group; with several groups
    axis 1 indexes C_out/group, not TensorRT's K, so those weights are quantised per tensor.
    """
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return 1 if group == 1 else None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return 0


class _Writer:
    def __init__(self, model: onnx.ModelProto, table: CalibrationTable) -> None:
        self.model = model
        self.graph = model.graph
        self.table = table
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.producers = {out: node for node in self.graph.node for out in node.output}
        self.new_nodes: list[onnx.NodeProto] = []
        self.dequantized: dict[str, str] = {}
        self.weights: dict[tuple[str, int | None], str] = {}

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def activation(self, tensor: str) -> str:
        """The DQ output standing for ``tensor``; created once and shared."""
        if tensor in self.dequantized:
            return self.dequantized[tensor]
        if tensor not in self.table.ranges:
            raise KeyError(f"no calibration range for tensor {tensor!r}")
        amax = max(self.table.amax(tensor), 1e-8)
        scale = self._constant(f"{tensor}_scale", np.array(amax / 127.0, dtype=np.float32))
        zero = self._constant(f"{tensor}_zero_point", np.array(0, dtype=np.int8))
        quantized, output = f"{tensor}_QuantizeLinear", f"{tensor}_DequantizeLinear"
        self.new_nodes += [
            helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=f"{tensor}_Q"),
            helper.make_node("DequantizeLinear", [quantized, scale, zero], [output], name=f"{tensor}_DQ"),
        ]
        self.dequantized[tensor] = output
        return output

    def weight(self, name: str, axis: int | None) -> str:
        """Per-channel Q→DQ on ``axis``, or per-tensor (scalar scale, no axis) when ``axis`` is None; one
        per weight and axis, shared by every layer that uses the weight (a module applied twice)."""
        if (name, axis) in self.weights:
            return self.weights[name, axis]
        values = numpy_helper.to_array(self.initializers[name]).astype(np.float32)
        reduce = tuple(d for d in range(values.ndim) if d != axis)
        amax = np.abs(values).max(axis=reduce)
        scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        prefix = name if not any(key[0] == name for key in self.weights) else f"{name}_axis{axis}"
        scale = self._constant(f"{prefix}_scale", scales)
        zero = self._constant(f"{prefix}_zero_point", np.zeros(scales.shape, dtype=np.int8))
        quantized, output = f"{prefix}_QuantizeLinear", f"{prefix}_DequantizeLinear"
        axis_attr = {} if axis is None else {"axis": axis}
        self.new_nodes += [
            helper.make_node("QuantizeLinear", [name, scale, zero], [quantized], name=f"{prefix}_Q", **axis_attr),
            helper.make_node("DequantizeLinear", [quantized, scale, zero], [output], name=f"{prefix}_DQ", **axis_attr),
        ]
        self.weights[name, axis] = output
        return output

    def is_activation(self, tensor: str) -> bool:
        return tensor not in self.initializers and (self.producers.get(tensor) is None
                                                    or self.producers[tensor].op_type != "Constant")

    def feeds_from_weighted(self, tensor: str, quantized: set[str]) -> bool:
        producer = self.producers.get(tensor)
        return producer is not None and producer.name in quantized

    def write(self, exclude: set[str]) -> dict[str, list[str]]:
        weighted = [n for n in self.graph.node if n.op_type in WEIGHTED and len(n.input) > 1
                    and n.input[1] in self.initializers]
        quantized = {n.name for n in weighted if n.name not in exclude}
        for node in weighted:
            if node.name not in quantized:
                continue
            node.input[0] = self.activation(node.input[0])
            node.input[1] = self.weight(node.input[1], weight_axis(node))
        residual = []
        for node in self.graph.node:
            if node.op_type != "Add" or not all(self.is_activation(t) for t in node.input):
                continue
            fused = next((t for t in node.input if self.feeds_from_weighted(t, quantized)), None)
            if fused is None:  # no INT8 conv to fuse with: the Add stays in floating point
                continue
            for index, tensor in enumerate(node.input):
                if tensor != fused and tensor in self.table.ranges:
                    node.input[index] = self.activation(tensor)
                    residual.append(tensor)
        self._insert_sorted()
        return {"quantized": sorted(quantized), "excluded": sorted(set(n.name for n in weighted) - quantized),
                "residual_inputs": residual}

    def _insert_sorted(self) -> None:
        """Place each new Q/DQ right after its input is produced, keeping the graph topologically sorted."""
        by_input: dict[str, list[onnx.NodeProto]] = {}
        for node in self.new_nodes:
            by_input.setdefault(node.input[0], []).append(node)
        ordered = []

        def emit_after(tensor: str) -> None:
            for node in by_input.pop(tensor, []):
                ordered.append(node)
                emit_after(node.output[0])

        for tensor in [i.name for i in self.graph.input] + list(self.initializers):
            emit_after(tensor)
        for node in list(self.graph.node):
            ordered.append(node)
            for out in node.output:
                emit_after(out)
        assert not by_input, f"Q/DQ inputs never produced: {sorted(by_input)}"
        del self.graph.node[:]
        self.graph.node.extend(ordered)


def write_trt_qdq(model_path: Path, table: CalibrationTable, output: Path,
                  exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Write the TensorRT Q/DQ model; ``exclude`` names weighted nodes to leave in floating point."""
    model = onnx.load(str(model_path))
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    summary = _Writer(model, table).write(set(exclude))
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(output))
    return summary


def check_trt_qdq(model: onnx.ModelProto, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Structural rules of the TensorRT model; returns the violations (empty when it is right).

    Every zero-point is int8 0, no int32 bias is dequantised, and both inputs of every Conv and
    ConvTranspose not in ``exclude`` come from a DequantizeLinear.
    """
    problems = []
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = init.get(node.input[2]) if len(node.input) > 2 else None
            if zero is None or np.any(zero != 0) or zero.dtype != np.int8:
                problems.append(f"{node.name}: zero-point is not int8 0")
            if node.op_type == "DequantizeLinear" and init.get(node.input[0]) is not None \
                    and init[node.input[0]].dtype == np.int32:
                problems.append(f"{node.name}: int32 bias dequantisation")
        if node.op_type in ("Conv", "ConvTranspose") and node.name not in exclude:
            for slot in (0, 1):
                source = producers.get(node.input[slot])
                if source is None or source.op_type != "DequantizeLinear":
                    problems.append(f"{node.name}: input {slot} is not quantised")
    return problems

