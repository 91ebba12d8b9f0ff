"""Stage 4, export + verify: ONNX (dynamic batch), ONNX Runtime must match torch; reference outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.device.manifest import MODEL_FP32, REFERENCE

from .fold import sample_inputs
from .load import count, onnx_row
from .runner import Context, Output, Stage


class ExportStage(Stage):
    name = "export"
    title = "export + verify"
    reads = ("optimize.opset", "optimize.reference_samples", "input.name")

    def run(self, ctx: Context, out: Path) -> Output:
        from ..data import normalize
        from ..export import export_onnx, onnx_predict, verify_onnx

        config, model, data = ctx.config, ctx.get("model"), ctx.get("data")
        mean, std = ctx.info["load"]["mean"], ctx.info["load"]["std"]
        path = out / MODEL_FP32
        export_onnx(model, path, config.input.shape, opset=config.optimize.opset, input_name=config.input.name)
        difference = verify_onnx(model, path, sample_inputs(ctx).numpy())
        ctx.say(f"exported ONNX opset {config.optimize.opset}; ONNX Runtime matches torch (max diff {difference:.2g})")
        samples = min(config.optimize.reference_samples, len(data.test))
        inputs = normalize(data.test.images[:samples], mean, std)
        np.savez(out / REFERENCE, inputs=inputs, outputs=onnx_predict(path, inputs),
                 labels=data.test.labels[:samples].astype(np.int64))
        counts = count(model, config.input.shape)
        label = "ONNX FP32 (BN folded)" if config.optimize.fold_bn else "ONNX FP32"
        row = onnx_row(label, path, config, data, mean, std, **counts,
                       note=f"opset {config.optimize.opset}, ORT vs torch max diff {difference:.2g}")
        return Output(rows=[row], info={"top1": row["top1"], "counts": counts, "max_difference": difference},
                      files=[MODEL_FP32, REFERENCE])
