"""Stage 3, fold BatchNorm (``optimize.fold_bn``) into the convolutions before it, checked numerically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .load import count
from .runner import Context, Lazy, Output, Stage


def sample_inputs(ctx: Context, n: int = 64) -> Any:
    import torch

    from ..data import normalize

    data = ctx.get("data")
    load = ctx.info["load"]
    return torch.from_numpy(normalize(data.test.images[:n], load["mean"], load["std"]))


class FoldStage(Stage):
    name = "fold"
    title = "fold BatchNorm"
    reads = ("optimize.fold_bn",)

    def run(self, ctx: Context, out: Path) -> Output:
        from ..fold import fold_batchnorm, max_difference

        if not ctx.config.optimize.fold_bn:
            return Output(info={"enabled": False})
        model = ctx.get("model")
        folded, n = fold_batchnorm(model)
        difference = max_difference(model, folded, sample_inputs(ctx))
        ctx.say(f"folded {n} BatchNorm layers into their convolutions (max output change {difference:.2g})")
        ctx.put("model", folded)
        note = f"{n} BatchNorm layer(s) folded, max output change {difference:.2g}"
        return Output(rows=[dict(stage="BatchNorm folded", **count(folded, ctx.config.input.shape), note=note)],
                      info={"enabled": True, "folded": n, "max_difference": difference})

    def restore(self, ctx: Context, out: Path, info: dict[str, Any]) -> None:
        """Folding is deterministic and takes milliseconds: redo it on the (lazily restored) model."""
        if not info.get("enabled", True):
            return
        previous = ctx.raw("model")

        def make() -> Any:
            from ..fold import fold_batchnorm

            return fold_batchnorm(ctx.resolve(previous))[0]

        ctx.put("model", Lazy(make))
