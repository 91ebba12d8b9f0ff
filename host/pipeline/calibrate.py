"""Stage 5, calibrate + write the INT8 files (``[quantize]`` and the calibration images, by content)."""

from __future__ import annotations

from pathlib import Path

from edgekit.device.manifest import MODEL_FP32

from ..config import Config
from .runner import Context, Output, Stage


class CalibrateStage(Stage):
    name = "calibrate"
    title = "calibrate + INT8"
    reads = ("quantize",)

    def files(self, config: Config) -> dict[str, Path]:
        source = config.quantize.source
        return {"quantize.source": config.resolve(source)} if source is not None else {}

    def run(self, ctx: Context, out: Path) -> Output:
        from ..quantize import quantize

        if not ctx.config.quantize.enabled:
            return Output(info={"enabled": False})
        load = ctx.info["load"]
        fp32_top1 = ctx.info["export"]["top1"]
        result = quantize(ctx.config, ctx.files[MODEL_FP32], out, ctx.get("data"), load["mean"], load["std"],
                          fp32_top1, ctx.say)
        info = dict(result.info, enabled=True, accuracy=result.accuracy, fp_layers=result.excluded,
                    sensitivity=result.sensitivity[:10])
        note = f"{result.info['method']}, {result.info['images']} images"
        if result.excluded:
            note += f", {len(result.excluded)} layer(s) kept in float"
        return Output(rows=[dict(stage="INT8 calibrated", note=note)], info=info, files=result.files)
