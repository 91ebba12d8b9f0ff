"""A latency model from a runtime's per-layer profile (TensorRT, ONNX Runtime, OpenVINO): whole models → the table.

Building one TensorRT engine per layer variant would cost minutes each on a Jetson, and on a CPU a small layer
timed alone carries a per-call overhead and misses the caches and threads a whole model runs with; instead the
agent builds the whole model at a few uniform widths (``PROFILE_LEVELS``) and runs each under the runtime's
profiler (TensorRT's IProfiler or ``trtexec --dumpProfile --exportProfile``; ONNX Runtime's ``enable_profiling``
trace; OpenVINO's performance counters). TensorRT names its layers after the ONNX nodes it fused
("/model/conv1/Conv + /model/relu/Relu", "PWN(...)", Myelin's "{ForeignNode[/a/Conv.../b/Gemm]}"); ONNX Runtime
after the node or output its fused kernel ends with, renamed by its layout passes
("/model/relu/Relu_output_0_nchwc", "/model/conv1/Conv_token_12"); the agent names OpenVINO's by the source
nodes OpenVINO says it fused ("/model/conv1/Conv/WithoutBiases, /model/relu/Relu").
Each layer's time goes to the Conv/Gemm nodes named in it (a range: every node between its two ends), split by
MACs when there are several; an activation or residual add goes to the Conv it follows (``node_layers``), and
each Conv is one of our ``Layer``s by its weight's name. Reformatting layers and pooling alone are nobody's: the
whole-model fit (``LatencyModel``'s line) carries them.

A layer measured at the same fraction of both its widths (the diagonal) gives its time at any other widths
through its MACs: a (cin, cout) pair is looked up at the diagonal point of the same MACs, interpolated between
the profiled levels (layers of the same shape pool their points). That is exact where time follows MACs and
keeps what it does not (a layer flat below some width stays flat), at one engine per level.

Pure functions of plain data; the agent returns the profiles unchanged (``device/jobs/latency.py``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping

from .latency import LEVELS, WHOLE_LEVELS, GroupSpace, Layer, aligned, layer_variants

PROFILE_LEVELS = tuple(sorted(set(LEVELS) | set(WHOLE_LEVELS), reverse=True))  # 0.0: every group at its floor
_SEPARATORS = re.compile(r" \+ |\.\.\.|[\s\[\]{}(),]+")
_NOBODY = ("Reformatting CopyNode", "reformatter")


def parse_exported_profile(text: str) -> dict[str, float]:
    """``trtexec --exportProfile`` JSON (``[{"count": N}, {"name", "timeMs", "averageMs", "medianMs",
    "percentage"}, ...]``) → mean ms per layer, as the agent's IProfiler reports it."""
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError("a trtexec profile is a JSON list")
    times = {}
    for row in rows:
        if isinstance(row, dict) and "name" in row:
            times[str(row["name"])] = float(row.get("averageMs", row.get("timeMs", 0.0)))
    if not times:
        raise ValueError("the trtexec profile names no layer")
    return times


_WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1, "QLinearConv": 3,
                 "QLinearMatMul": 3}  # where each op that carries a layer's weights takes them
_WEIGHT_PASSES = ("Identity", "DequantizeLinear", "Transpose", "Cast")  # between an initializer and its layer
_WEIGHT_SUFFIXES = ("_quantized", "_DequantizeLinear_Output", ".weight")
# What a runtime fuses into the Conv/Gemm before it (TensorRT "conv + relu", ONNX Runtime's FusedConv with its
# activation or residual add), so a time reported under its name is that layer's. Pooling, reshapes and
# concatenations are not: they stay nobody's and the whole-model fit carries them.
_FUSABLE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add", "Sum", "Mul",
                      "BatchNormalization", "QuantizeLinear", "DequantizeLinear", "QLinearAdd"})
# Runtimes rename what they rewrite: ONNX Runtime's NCHWc layout pass the outputs ("<tensor>_nchwc"), its NHWC
# pass for INT8 kernels the nodes ("<node>_token_145"), either possibly on the other; OpenVINO a Conv whose bias
# it split off ("<node>/WithoutBiases")
_RUNTIME_SUFFIX = re.compile(r"(_nchwc|_token_\d+|/WithoutBiases)+$")


def node_layers(model: Any, layers: Iterable[Layer]) -> tuple[dict[str, str], list[str]]:
    """The ONNX file's names → our layer names, and every node name in graph order (a Myelin range's ends may be
    any node). Mapped: each Conv/Gemm node (by its weight initializer ``[model.]<layer>.weight``, reached through
    Identity or DequantizeLinear in deduplicated or INT8 files) and, under both its node and its output names,
    what a runtime fuses into it: the activations and the residual add after it (through single-consumer
    edges: a skip connection's source is not the add's layer)."""
    graph = model.graph
    names = {layer.name for layer in layers}
    initializers = {tensor.name for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers[tensor] = consumers.get(tensor, 0) + 1
    mapping: dict[str, str] = {}
    for node in graph.node:  # topological order: a node's producers are mapped before it
        owner = _weight_owner(node, producer, initializers, names) if node.op_type in _WEIGHT_INPUT else \
            _fused_owner(node, producer, consumers, mapping) if node.op_type in _FUSABLE else None
        if owner is not None:
            mapping[node.name] = owner
            mapping.update({output: owner for output in node.output})
    return mapping, [node.name for node in graph.node]


def _weight_owner(node: Any, producer: Mapping[str, Any], initializers: set[str], names: set[str]) -> str | None:
    index = _WEIGHT_INPUT[node.op_type]
    if len(node.input) <= index:
        return None
    tensor = node.input[index]
    while tensor not in initializers and tensor in producer and producer[tensor].op_type in _WEIGHT_PASSES:
        tensor = producer[tensor].input[0]
    for suffix in _WEIGHT_SUFFIXES:
        tensor = tensor[:-len(suffix)] if tensor.endswith(suffix) else tensor
    return _layer_of(tensor.split("."), names) or _layer_of(_scope_path(node.name), names)


def _layer_of(parts: list[str], names: set[str]) -> str | None:
    """The longest tail of a dotted module path that is a layer: the exporter's wrapper adds leading names."""
    return next((".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in names), None)


def _scope_path(node: str) -> list[str]:
    """torch's exporter names a node by its module scopes, each child under its parent's name:
    "/model/features/features.1/block/block.0/block.0.0/Conv" is module ``features.1.block.0.0``. For a weight
    renamed on the way (BatchNorm folded on the graph: "<node>.folded_weight")."""
    parts: list[str] = []
    for scope in [part for part in node.split("/") if part][:-1]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts).split(".")


def _fused_owner(node: Any, producer: Mapping[str, Any], consumers: Mapping[str, int], mapping: Mapping[str, str]
                 ) -> str | None:
    owners = [mapping[tensor] for tensor in node.input
              if tensor in mapping and tensor in producer and consumers.get(tensor, 0) == 1]
    return owners[0] if owners else None  # a residual add: the block's own conv comes first (``conv(x) + skip``)


def macs(layer: Layer, cin: int, cout: int) -> float:
    """Multiply-accumulates of one image through the layer at these widths."""
    if layer.kind == "linear":
        return float(cin * cout)
    out = math.ceil(layer.size[0] / layer.stride[0]) * math.ceil(layer.size[1] / layer.stride[1])
    per_out = layer.kernel[0] * layer.kernel[1] * (1 if layer.depthwise else cin // max(1, layer.groups))
    return float(cout * per_out * out)


def attribute(profile: Mapping[str, float], nodes: Mapping[str, str], order: list[str],
              weights: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Each profiled TensorRT layer's time given to the layers its name covers (split by ``weights``, their
    MACs); returns per-layer ms and the time nobody's (reformatting, pooling, adds alone)."""
    position = {name: i for i, name in enumerate(order)}
    per_layer: dict[str, float] = {}
    rest = 0.0
    for name, ms in profile.items():
        covered = [] if name.startswith(_NOBODY) else _covered(name, nodes, order, position)
        owners = list(dict.fromkeys(nodes[node] for node in covered))
        total = sum(weights.get(owner, 0.0) for owner in owners)
        if not owners:
            rest += ms
            continue
        for owner in owners:
            share = weights.get(owner, 0.0) / total if total > 0 else 1 / len(owners)
            per_layer[owner] = per_layer.get(owner, 0.0) + ms * share
    return per_layer, rest


def _covered(name: str, nodes: Mapping[str, str], order: list[str], position: Mapping[str, int]) -> list[str]:
    tokens = [_runtime_name(token) for token in _SEPARATORS.split(name) if token]
    if "ForeignNode" in name:
        ends = [position[token] for token in tokens if token in position]
        if len(ends) >= 2:
            return [node for node in order[min(ends):max(ends) + 1] if node in nodes]
    return [token for token in tokens if token in nodes]


def _runtime_name(token: str) -> str:
    """A name as the ONNX file has it, without what a runtime's own graph passes appended."""
    return _RUNTIME_SUFFIX.sub("", token)


def level_widths(spaces: Mapping[str, GroupSpace]) -> dict[str, dict[str, int]]:
    """The whole models profiled: ``whole:<level>``, every group at ``level`` of its width (0.0: its floor)."""
    return {f"whole:{level}": {name: aligned(space, level) if level else space.floor for name, space in spaces.items()}
            for level in PROFILE_LEVELS}


def profile_table(layers: list[Layer], spaces: Mapping[str, GroupSpace], profiles: Mapping[str, Mapping[str, float]],
                  nodes: Mapping[str, str], order: list[str]) -> dict[str, float]:
    """Every layer variant's ms (the ids ``LatencyModel`` reads), from the whole models' profiles: each layer's
    times at the profiled levels, looked up at the diagonal point of the same MACs (see the module's doc)."""
    points: dict[str, list[tuple[float, float]]] = {}  # layer signature → (MACs, ms) profiled
    for ident, widths in level_widths(spaces).items():
        if ident not in profiles:
            continue
        weights = {layer.name: macs(layer, *layer.widths(widths)) for layer in layers}
        per_layer, _ = attribute(profiles[ident], nodes, order, weights)
        for layer in layers:
            points.setdefault(layer.signature(), []).append((weights[layer.name], per_layer.get(layer.name, 0.0)))
    table = {}
    for ident, (layer, cin, cout) in layer_variants(layers, spaces).items():
        samples = _mean_per_point(sorted(points.get(layer.signature(), []))) or [(1.0, 0.0)]
        table[ident] = _interpolate(samples, macs(layer, cin, cout))
    return table


def _mean_per_point(samples: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Layers alike (same shape) profiled at the same MACs: their mean."""
    merged: dict[float, list[float]] = {}
    for work, ms in samples:
        merged.setdefault(work, []).append(ms)
    return sorted((work, sum(values) / len(values)) for work, values in merged.items())


def _interpolate(points: list[tuple[float, float]], work: float) -> float:
    """Linear in MACs between the profiled points; below the lowest, in proportion to MACs; above the highest
    (the full width), its value."""
    if work <= points[0][0]:
        low_work, low_ms = points[0]
        return low_ms * work / low_work if low_work > 0 else low_ms
    for (w0, t0), (w1, t1) in zip(points, points[1:]):
        if work <= w1:
            return t0 + (t1 - t0) * (work - w0) / (w1 - w0)
    return points[-1][1]
