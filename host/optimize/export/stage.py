"""Stage 4, export + verify: ONNX (dynamic batch, every output, the classifier first), BatchNorm folded on
the graph where torch did not, ONNX Runtime must match torch; the FP32 reference outputs."""

from __future__ import annotations

from pathlib import Path

from ....device.contract.manifest import MODEL_FP32, REFERENCE
from ..fold.stage import sample_inputs
from ..load import count, onnx_row
from ..runner import Context, Output, Stage


class ExportStage(Stage):
    name = "export"
    title = "export + verify"
    reads = ("optimize.opset", "optimize.reference_samples", "input.name")

    def run(self, ctx: Context, out: Path) -> Output:
        from ...train.data import normalize
        from ..fold.batchnorm import FoldReport, fold_in_onnx
        from ..prevalidate import reference_outputs, write_reference
        from .onnx_export import export_onnx, verify_onnx

        config, model, data = ctx.config, ctx.get("model"), ctx.get("data")
        mean, std = ctx.info["load"]["mean"], ctx.info["load"]["std"]
        path = out / MODEL_FP32
        outputs = export_onnx(model, path, config.input.shape, opset=config.optimize.opset,
                              input_name=config.input.name, output=config.model.output)
        folding = {}
        if config.optimize.fold_bn:
            torch_side = ctx.info["fold"]
            report = fold_in_onnx(path, FoldReport(torch_side["batchnorms"], torch_side["torch_folded"],
                                                   fx_error=torch_side["fx_error"]))
            ctx.say(report.message())
            folding = dict(vars(report), message=report.message())
        difference = verify_onnx(model, path, sample_inputs(ctx).numpy(), output=config.model.output)
        ctx.say(f"exported ONNX opset {config.optimize.opset}; ONNX Runtime matches torch (max diff {difference:.2g})")
        samples = min(config.optimize.reference_samples, len(data.test))
        inputs = normalize(data.test.images[:samples], mean, std)
        write_reference(out / REFERENCE, inputs, data.test.labels[:samples],
                        reference_outputs({MODEL_FP32: path}, inputs))
        counts = count(model, config.input.shape)
        label = "ONNX FP32 (BN folded)" if config.optimize.fold_bn else "ONNX FP32"
        note = f"opset {config.optimize.opset}, ORT vs torch max diff {difference:.2g}"
        if folding:
            note += f"; BN folded {report.folded}/{report.batchnorms}"
            note += f", {report.remaining} kept as scales" if report.remaining else ""
        if len(outputs) > 1:
            note += f"; outputs {', '.join(outputs)}"
        row = onnx_row(label, path, config, data, mean, std, **counts, note=note)
        return Output(rows=[row], info={"top1": row["top1"], "counts": counts, "max_difference": difference,
                                        "folding": folding, "outputs": outputs, "latency_ms": row["latency_ms"]},
                      files=[MODEL_FP32, REFERENCE])
