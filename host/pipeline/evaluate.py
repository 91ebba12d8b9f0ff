"""Stage 6, evaluate: every INT8 file on held-out data and at the host's ONNX Runtime latency."""

from __future__ import annotations

from pathlib import Path

from edgekit.device.manifest import MODEL_INT8_CPU, MODEL_INT8_QDQ

from .load import onnx_row
from .runner import Context, Output, Stage

LABELS = {MODEL_INT8_CPU: "ONNX INT8 CPU (U8S8)", MODEL_INT8_QDQ: "ONNX INT8 Q/DQ for TensorRT"}


class EvaluateStage(Stage):
    name = "evaluate"
    title = "evaluate"

    def run(self, ctx: Context, out: Path) -> Output:
        config = ctx.config
        mean, std = ctx.info["load"]["mean"], ctx.info["load"]["std"]
        counts = ctx.info["export"]["counts"]
        rows = [onnx_row(label, ctx.files[name], config, ctx.get("data"), mean, std, **counts, file=name)
                for name, label in LABELS.items() if name in ctx.files]
        return Output(rows=rows, info={"accuracy": {row["file"]: row["top1"] for row in rows}})
