"""Stage 6, evaluate: every INT8 file on held-out data and at the host's ONNX Runtime latency; the
reference outputs of every model file (``reference.npz``), so the device checks its engine against
the same file run on the host."""

from __future__ import annotations

from pathlib import Path

from ...device.contract.manifest import (
    MODEL_FP32,
    MODEL_INT8_CPU,
    MODEL_INT8_CPU_AVX2,
    MODEL_INT8_QDQ,
    MODEL_QAT,
    REFERENCE,
)
from .load import onnx_row
from .runner import Context, Output, Stage

LABELS = {MODEL_INT8_CPU: "ONNX INT8 CPU (U8S8)", MODEL_INT8_CPU_AVX2: "ONNX INT8 CPU, 7-bit weights (no VNNI)",
          MODEL_INT8_QDQ: "ONNX INT8 Q/DQ for TensorRT"}


SLOWER_MARGIN = 1.10  # timing noise on a busy host: resnet18 at 32×32 was "slower" at 0.09 ms vs 0.09 ms


def slower_than_fp32(rows: list[dict], fp32_latency: dict) -> dict[str, str]:
    """The CPU INT8 file, when ONNX Runtime on this host runs it clearly (``SLOWER_MARGIN``) slower than the
    FP32 model, with the figures.

    Only the file ONNX Runtime devices run: the Q/DQ file is for TensorRT, and ONNX Runtime's x86 kernels
    for symmetric int8 activations are slow, so its host latency says nothing about a Jetson. Within the
    margin the two are a tie, and a warning about a tie sends the user after noise.
    """
    flagged = {}
    for row in rows:
        if row["file"] != MODEL_INT8_CPU:
            continue
        latency = {str(batch): ms for batch, ms in (row.get("latency_ms") or {}).items()}
        fp32 = {str(batch): ms for batch, ms in fp32_latency.items()}  # keys are strings once cached as JSON
        slower = [f"batch {batch}: {latency[batch]:.3g} ms vs {fp32[batch]:.3g} ms"
                  for batch in latency if batch in fp32 and latency[batch] > fp32[batch] * SLOWER_MARGIN]
        if slower:
            flagged[row["file"]] = "; ".join(slower)
    return flagged


class EvaluateStage(Stage):
    name = "evaluate"
    title = "evaluate"

    def run(self, ctx: Context, out: Path) -> Output:
        import numpy as np

        from .prevalidate import reference_outputs, write_reference

        config = ctx.config
        mean, std = ctx.info["load"]["mean"], ctx.info["load"]["std"]
        counts = ctx.info["export"]["counts"]
        rows = [onnx_row(label, ctx.files[name], config, ctx.get("data"), mean, std, **counts, file=name)
                for name, label in LABELS.items() if name in ctx.files]
        slower = slower_than_fp32(rows, ctx.info["export"].get("latency_ms") or {})
        for name, figures in slower.items():
            ctx.say(f"warning: {name} runs slower than FP32 on this host's ONNX Runtime ({figures})")
            next(r for r in rows if r["file"] == name)["note"] = "slower than FP32 here"
        with np.load(str(ctx.files[REFERENCE]), allow_pickle=False) as data:
            inputs, labels = data["inputs"], data["labels"]
        models = {name: ctx.files[name] for name in (MODEL_FP32, MODEL_QAT, *LABELS) if name in ctx.files}
        write_reference(out / REFERENCE, inputs, labels, reference_outputs(models, inputs))
        return Output(rows=rows, info={"accuracy": {row["file"]: row["top1"] for row in rows},
                                       "int8_slower_than_fp32": slower}, files=[REFERENCE])
