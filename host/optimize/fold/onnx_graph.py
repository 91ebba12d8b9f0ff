"""Fold BatchNormalization into the Conv / ConvTranspose / Gemm before it, on the ONNX graph.

This works for any model that exports, including those torch.fx cannot trace (an ``if`` on a shape,
optional arguments) and fused BN+activation modules (timm's ``BatchNormAct2d`` calls ``F.batch_norm``
inside its own ``forward``, which torch-level folding never sees). Hand-written rather than
onnxoptimizer's ``fuse_bn_into_conv`` because that pass handles Conv only (not ConvTranspose or Gemm)
and does not say what it folded; here every fold is counted and the BNs that stay (those after a concat
or an activation, as in pre-activation DenseNets) are reported as what they are: per-channel scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


@dataclass
class FoldResult:
    folded: int
    remaining: int


class _Graph:
    """Lookups over one graph: constant values (through Identity chains), producers, consumers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        seen = 0
        while name not in self.initializers and seen < 8:
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Constant":
                return numpy_helper.to_array(node.attribute[0].t)
            if node.op_type != "Identity":
                return None
            name, seen = node.input[0], seen + 1
        return numpy_helper.to_array(self.initializers[name]) if name in self.initializers else None

    def add_initializer(self, array: np.ndarray, name: str) -> str:
        unique, suffix = name, 0
        while unique in self.initializers or unique in self.producer:
            suffix += 1
            unique = f"{name}_{suffix}"
        tensor = numpy_helper.from_array(array.astype(np.float32), unique)
        self.graph.initializer.append(tensor)
        self.initializers[unique] = tensor
        return unique


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _scaled_weights(layer: onnx.NodeProto, weight: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """The layer's weights with each output channel multiplied by ``scale``."""
    if layer.op_type == "Conv":
        return weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    if layer.op_type == "ConvTranspose":  # weight: [in, out/groups, k...]
        groups = int(_attribute(layer, "group", 1))
        grouped = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
        per_group = scale.reshape(groups, 1, weight.shape[1], *([1] * (weight.ndim - 2)))
        return (grouped * per_group).reshape(weight.shape)
    transposed = int(_attribute(layer, "transB", 0))  # Gemm: B is [N, K] when transB else [K, N]
    return weight * (scale[:, None] if transposed else scale[None, :])


def _fold_one(graph: _Graph, norm: onnx.NodeProto) -> bool:
    if len(norm.output) != 1 or int(_attribute(norm, "training_mode", 0)):
        return False
    layer = graph.producer.get(norm.input[0])
    if layer is None or layer.op_type not in FOLDABLE or norm.input[0] in graph.outputs:
        return False
    if len(graph.consumers.get(norm.input[0], [])) != 1:
        return False
    if layer.op_type == "Gemm" and int(_attribute(layer, "transA", 0)):
        return False
    gamma, beta, mean, var = (graph.constant(name) for name in norm.input[1:5])
    weight = graph.constant(layer.input[1])
    if any(value is None for value in (gamma, beta, mean, var, weight)):
        return False
    channels = gamma.shape[0]
    bias = graph.constant(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else np.zeros(channels)
    if bias is None:
        return False
    scale = gamma / np.sqrt(var + float(_attribute(norm, "epsilon", 1e-5)))
    if layer.op_type == "Gemm":
        alpha, gemm_beta = float(_attribute(layer, "alpha", 1.0)), float(_attribute(layer, "beta", 1.0))
        weight = weight * alpha
        bias = np.broadcast_to(bias * gemm_beta, (channels,))
        _set_attribute(layer, "alpha", 1.0)
        _set_attribute(layer, "beta", 1.0)
    new_weight = _scaled_weights(layer, weight, scale)
    new_bias = (bias - mean) * scale + beta
    inputs = list(layer.input) + [""] * (3 - len(layer.input))
    inputs[1] = graph.add_initializer(new_weight, f"{layer.name or 'layer'}.folded_weight")
    inputs[2] = graph.add_initializer(new_bias, f"{layer.name or 'layer'}.folded_bias")
    del layer.input[:]
    layer.input.extend(inputs)
    layer.output[0] = norm.output[0]
    graph.graph.node.remove(norm)
    return True


def _prune_unused(model: onnx.ModelProto) -> None:
    """Drop initializers and Identity/Constant nodes nothing reads any more (the BN parameters)."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("Identity", "Constant") and not set(n.output) & used]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def fold_onnx_batchnorm(model: onnx.ModelProto) -> FoldResult:
    """Fold in place; returns how many BNs were folded and how many remain."""
    folded = 0
    progress = True
    while progress:
        progress = False
        graph = _Graph(model)
        for node in list(model.graph.node):
            if node.op_type == "BatchNormalization" and _fold_one(graph, node):
                folded += 1
                progress = True
                break  # lookups are stale after a rewrite
    _prune_unused(model)
    remaining = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    return FoldResult(folded, remaining)


def fold_onnx_file(path: Path) -> FoldResult:
    model = onnx.load(str(path))
    result = fold_onnx_batchnorm(model)
    onnx.save(model, str(path))
    return result


def count_batchnorm(path: Path) -> int:
    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)
