"""Fold BatchNorm into the Conv / ConvTranspose / Linear before it, for inference.

First with torch.fx, so the rewrite follows the real data flow (not module order), fused with torch's
own ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``; a BN is folded only when its input comes from
exactly one such layer and nothing else reads that layer's output. Where fx cannot trace the model,
and for what it does not see (fused BN+activation modules), the ONNX graph pass in ``onnx_fold.py``
folds after export; ``FoldReport`` counts both.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# -- folding for any model: torch.fx where it traces, the ONNX graph for the rest -----------------------
@dataclass
class FoldReport:
    """What folding did, counted for real: BNs folded in torch, in the ONNX graph, and those left."""

    batchnorms: int = 0
    torch_folded: int = 0
    onnx_folded: int = 0
    remaining: int = 0
    fx_error: str = ""

    @property
    def folded(self) -> int:
        return self.torch_folded + self.onnx_folded

    def message(self) -> str:
        where = []
        if self.torch_folded:
            where.append(f"{self.torch_folded} with torch.fx")
        if self.onnx_folded:
            where.append(f"{self.onnx_folded} in the ONNX graph")
        text = f"folded {self.folded} of {self.batchnorms} BatchNorm layers into their convolutions"
        text += f" ({', '.join(where)})" if where else ""
        if self.fx_error:
            text += f"; torch.fx cannot trace the model ({self.fx_error}), so folding ran on the ONNX graph"
        if self.remaining:
            text += (f"; {self.remaining} follow no Conv/Gemm (after a concat or an activation) and stay as "
                     "per-channel scales")
        return text


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm modules, subclasses (timm's BatchNormAct2d) included."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_in_torch(model: nn.Module, sample: torch.Tensor, which: Any = 0) -> tuple[nn.Module, FoldReport]:
    """torch.fx folding, checked on ``sample``; any failure (trace errors, a traced graph that wants
    arguments the model treats as optional, a numerical mismatch) leaves the model as it is and the
    ONNX pass does the folding instead."""
    from ...outputs import select

    report = FoldReport(batchnorms=count_batchnorms(model))
    try:  # an fx GraphModule prints its own traceback to stderr when it fails: keep the terminal to one line
        with contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            folded, count = fold_batchnorm(model)
            expected, actual = select(model.eval()(sample), which), select(folded(sample), which)
        scale = float(expected.abs().max()) or 1.0
        if float((expected - actual).abs().max()) > 1e-3 * scale:
            raise ValueError("the folded model's outputs differ")
    except Exception as exc:  # noqa: BLE001 - fx raises TraceError, TypeError, NotImplementedError, ...
        report.fx_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]}"
        return model, report
    report.torch_folded = count
    return folded, report


def export_folded(model: nn.Module, path: Path, shape: list[int], **export: Any) -> Path:
    """``model`` exported with its BatchNorms folded as a push folds them (in torch, then what is left on the
    graph), for files that stand in for the shipped one (the latency model's whole models, benchmarks).
    ``export``: ``export_onnx``'s keywords."""
    from ..export.onnx_export import export_onnx
    from .onnx_graph import fold_onnx_file

    folded, _ = fold_in_torch(copy.deepcopy(model).eval(), torch.zeros(1, *shape), export.get("output", 0))
    export_onnx(folded, path, shape, **export)
    fold_onnx_file(path)
    return path


def fold_in_onnx(path: Path, report: FoldReport) -> FoldReport:
    """Fold what torch left (fused BN+act modules, untraceable models, ConvTranspose+BN) on the graph."""
    from .onnx_graph import fold_onnx_file

    result = fold_onnx_file(path)
    report.onnx_folded, report.remaining = result.folded, result.remaining
    return report
