"""Stage 5, calibrate + write the INT8 files (``[quantize]`` and the calibration images, by content)."""

from __future__ import annotations

from pathlib import Path

from ....device.contract.manifest import CALIBRATION_JSON, MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2
from ...config import Config
from ...errors import CheckFailed, EdgekitError
from ..runner import Context, Output, Stage


def source_files(config: Config) -> dict[str, Path]:
    """The calibration images both INT8 stages read (``quantize.source``), hashed into their cache keys."""
    source = config.quantize.source
    return {"quantize.source": config.resolve(source)} if source is not None else {}


class CalibrateStage(Stage):
    name = "calibrate"
    title = "calibrate + INT8"
    reads = ("quantize", "validation")  # the device's rule decides which INT8 route is good enough

    def files(self, config: Config) -> dict[str, Path]:
        return source_files(config)

    def run(self, ctx: Context, out: Path) -> Output:
        from .ptq import quantize

        if not ctx.config.quantize.enabled:
            return Output(info={"enabled": False})
        load = ctx.info["load"]
        fp32_top1 = ctx.info["export"]["top1"]
        try:
            result = quantize(ctx.config, ctx.files[MODEL_FP32], out, ctx.get("data"), load["mean"], load["std"],
                              fp32_top1, ctx.say)
            avx2 = write_avx2_variant(ctx, ctx.files[MODEL_FP32], out, result.excluded, result.info["weighted_only"])
        except EdgekitError:
            raise
        except Exception as exc:  # noqa: BLE001 - the quantisers raise many kinds on unusual graphs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckFailed(f"INT8 calibration failed on this model ({type(exc).__name__}: {first}); the pruned, "
                              "exported FP32 model is cached: push it with precision = \"fp32\" (or set "
                              "quantize.enabled = false), and please report the model") from None
        result.files += [MODEL_INT8_CPU_AVX2] if avx2 else []
        info = dict(result.info, enabled=True, accuracy=result.accuracy, fp_layers=result.excluded,
                    sensitivity=result.sensitivity[:10])
        note = f"{result.info['method']}, {result.info['images']} images"
        if result.excluded:
            note += f", {len(result.excluded)} layer(s) kept in float"
        counts = ctx.info["export"]["counts"]  # one row per INT8 route tried (PTQ, PTQ + fallback), if several
        routes = [dict(row, **counts) for row in result.rows]
        return Output(rows=[dict(stage="INT8 calibrated", note=note)] + routes, info=info, files=result.files)


def write_avx2_variant(ctx: Context, fp32: Path, out: Path, excluded: list[str], weighted_only: bool) -> bool:
    """The CPU INT8 model with 7-bit weights, from the same ranges, the same float layers and the same
    placement (only the weighted layers when the mixed-precision route was chosen); False (and no file)
    when it would fail the device's validation rule against the FP32 model.

    Devices pick it when their x86 CPU lacks VNNI (``device/model_files.py``), where the full-range U8S8
    model can saturate. 7-bit weights cost precision (worst-sample cosine 0.97 against FP32 on the demo
    model, measured): shipping such a file would make every push to such a device fail the host's
    pre-upload check, so it is left out and those devices get the U8S8 file, which their own validation
    then judges.
    """
    from ....calibration.cpu import write_cpu_int8
    from ....calibration.table import CalibrationTable
    from ...train.data import normalize
    from .ptq import device_rule

    table = CalibrationTable.from_json((out / CALIBRATION_JSON).read_text())
    path = out / MODEL_INT8_CPU_AVX2
    write_cpu_int8(fp32, table, path, exclude=set(excluded), weighted_only=weighted_only, reduce_range=True)
    load, data = ctx.info["load"], ctx.get("data")
    rule = device_rule(ctx.config, ctx.files[MODEL_FP32], normalize(data.test.images, load["mean"], load["std"]),
                       data.test.labels)
    failed = rule.failures({MODEL_INT8_CPU_AVX2: path})
    if failed:
        ctx.say(f"warning: {MODEL_INT8_CPU_AVX2} (7-bit weights, for x86 CPUs without VNNI) would fail the device's "
                f"validation ({failed[MODEL_INT8_CPU_AVX2]}); not shipped: such CPUs get {MODEL_INT8_CPU}")
        path.unlink()
    return not failed
