"""Fold BatchNorm into the Conv / ConvTranspose / Linear before it, for inference.

Traced with torch.fx so the rewrite follows the real data flow (not module order), and fused with
torch's own ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``. A BN is folded only when its input
comes from exactly one such layer and nothing else reads that layer's output.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _module(graph_module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return graph_module.get_submodule(str(node.target))


def _fuse(layer: nn.Module, norm: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return fuse_linear_bn_eval(layer, norm)
    return fuse_conv_bn_eval(layer, norm, transpose=isinstance(layer, nn.modules.conv._ConvTransposeNd))


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fold_batchnorm(model: nn.Module) -> tuple[fx.GraphModule, int]:
    """Return an eval-mode copy with every foldable BN folded, and how many were folded."""
    graph_module = fx.symbolic_trace(copy.deepcopy(model).eval())
    folded = 0
    for node in list(graph_module.graph.nodes):
        norm = _module(graph_module, node)
        if not isinstance(norm, _NORMS) or not norm.track_running_stats:
            continue
        source = node.args[0]
        layer = _module(graph_module, source) if isinstance(source, fx.Node) else None
        if not isinstance(layer, _FOLDABLE) or len(source.users) != 1:
            continue
        _set_module(graph_module, str(source.target), _fuse(layer, norm))
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        folded += 1
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module.eval(), folded


def max_difference(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(inputs) - b.eval()(inputs)).abs().max())
