"""Stage 6, quantisation-aware training (``[quantize] qat_epochs``): after PTQ, and only when asked for or
— with ``"auto"`` — when PTQ and its fallback miss the budget or keep too many layers in float.

Its own cache key (``[quantize]`` and the calibration images by content, after the calibrate stage's
key): changing only the QAT settings re-runs QAT, not pruning or export. When QAT does not run, the
stage hands on nothing and the calibrate stage's files stay the ones shipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ....device.contract.manifest import CALIBRATION_JSON, MODEL_FP32, MODEL_INT8_CPU_AVX2
from ...config import Config
from ..runner import Context, Output, Stage
from .stage import source_files


class QatStage(Stage):
    name = "qat"
    distributed = True  # fine-tuning runs as DDP under torchrun
    title = "quantisation-aware training"
    reads = ("quantize", "validation")  # the device's rule decides which INT8 route is good enough

    def files(self, config: Config) -> dict[str, Path]:
        return source_files(config)

    def trains(self, config: Config) -> bool:
        return config.quantize.enabled and config.quantize.qat_epochs != 0

    def run(self, ctx: Context, out: Path) -> Output:
        from .ptq import QuantizeResult
        from .qat import qat_reason, quantize_aware

        calibrated: dict[str, Any] = ctx.info.get("calibrate", {})
        if not calibrated.get("enabled"):
            return Output(info={"enabled": False})
        reason = qat_reason(ctx.config, calibrated)
        if reason is None:
            return Output(info={"enabled": False})
        ctx.say(f"QAT: {reason}")
        load = ctx.info["load"]
        previous = QuantizeResult([], dict(calibrated["accuracy"]), list(calibrated["fp_layers"]),
                                  list(calibrated.get("sensitivity", [])), info=dict(calibrated))
        result = quantize_aware(ctx.config, ctx.get("model"), ctx.files[MODEL_FP32], ctx.files[CALIBRATION_JSON].parent,
                                previous, out, ctx.get("data"), load["mean"], load["std"], ctx.info["export"]["top1"],
                                ctx.say)
        withdrawn: list[str] = []
        if result.info.get("qat"):  # the 7-bit CPU variant from the same float model and ranges as the others
            from .ptq import QAT_FLOAT
            from .stage import write_avx2_variant

            source = out / QAT_FLOAT if (out / QAT_FLOAT).exists() else ctx.files[MODEL_FP32]
            if write_avx2_variant(ctx, source, out, result.excluded, result.info["weighted_only"]):
                result.files.append(MODEL_INT8_CPU_AVX2)
            else:  # PTQ's 7-bit file would not match QAT's weights and ranges
                withdrawn.append(MODEL_INT8_CPU_AVX2)
            if source != ctx.files[MODEL_FP32]:  # QAT won: its float model ships for TensorRT's implicit INT8
                result.files.append(QAT_FLOAT)
        counts = ctx.info["export"]["counts"]
        info = dict(result.info, enabled=True, reason=reason, accuracy=result.accuracy, fp_layers=result.excluded,
                    sensitivity=result.sensitivity[:10])
        return Output(rows=[dict(row, **counts) for row in result.rows], info=info, files=result.files,
                      withdrawn=withdrawn)
