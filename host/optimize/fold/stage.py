"""Stage 3, fold BatchNorm (``optimize.fold_bn``): with torch.fx where the model traces; the export stage
folds the rest on the ONNX graph (untraceable models, fused BN+activation modules) and counts both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..load import count
from ..runner import Context, Lazy, Output, Stage


def sample_inputs(ctx: Context, n: int = 64) -> Any:
    import torch

    from ...train.data import normalize

    data = ctx.get("data")
    load = ctx.info["load"]
    return torch.from_numpy(normalize(data.test.images[:n], load["mean"], load["std"]))


class FoldStage(Stage):
    name = "fold"
    title = "fold BatchNorm"
    reads = ("optimize.fold_bn",)

    def run(self, ctx: Context, out: Path) -> Output:
        from .batchnorm import fold_in_torch

        if not ctx.config.optimize.fold_bn:
            return Output(info={"enabled": False})
        model = ctx.get("model")
        folded, report = fold_in_torch(model, sample_inputs(ctx), ctx.config.model.output)
        ctx.put("model", folded)
        info = {"enabled": True, "batchnorms": report.batchnorms, "torch_folded": report.torch_folded,
                "fx_error": report.fx_error}
        note = (f"{report.torch_folded} of {report.batchnorms} BatchNorm layer(s) folded with torch.fx"
                if not report.fx_error else "torch.fx cannot trace the model: folded on the ONNX graph")
        return Output(rows=[dict(stage="BatchNorm folded (torch)", **count(folded, ctx.config.input.shape),
                                 note=note)], info=info)

    def restore(self, ctx: Context, out: Path, info: dict[str, Any]) -> None:
        """Folding is deterministic and takes milliseconds: redo it on the (lazily restored) model."""
        if not info.get("enabled", True):
            return
        previous = ctx.raw("model")

        def make() -> Any:
            from .batchnorm import fold_in_torch

            return fold_in_torch(ctx.resolve(previous), sample_inputs(ctx), ctx.config.model.output)[0]

        ctx.put("model", Lazy(make))
