"""Stage 1, load + evaluate: the trained checkpoint, its held-out top-1, and the unpruned FP32 baseline.

``model.baseline.onnx`` is the model exactly as trained, exported as a user would by hand: the device
benchmarks it beside the final model, so the report's speed-up is measured, not estimated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...device.contract.manifest import MODEL_BASELINE
from ..config import Config
from ..train.project import at_chance, chance_level, check_interface, load_data, near_chance_line, require_data
from .runner import Context, Lazy, Output, Stage

if TYPE_CHECKING:  # the data module imports torch: a fully cached run must not pay for it
    from ..train.data import Dataset


def normalization(config: Config, data: Dataset) -> tuple[list[float], list[float]]:
    from ..train.data import channel_stats

    if config.data.mean is not None:
        return list(config.data.mean), list(config.data.std or [])
    return channel_stats(data.train)


def count(model: Any, shape: list[int]) -> dict[str, int]:
    """Parameters and MACs of one image (torch-pruning's counter)."""
    import torch
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *shape))
    return {"params": int(params), "macs": int(macs)}


def load_trained(config: Config) -> tuple[Any, dict[str, Any]]:
    from ..train.checkpoint import load_model

    return load_model(config.require_checkpoint(), config.model.arch, config.model.num_classes,
                      config.model.width, config.input.shape[0])


def onnx_row(label: str, path: Path, config: Config, data: Dataset, mean: list[float], std: list[float],
             **extra: Any) -> dict[str, Any]:
    """One stage-table row for an ONNX file: size, host ONNX Runtime latency at batch 1 and 32, top-1."""
    from ..train.data import normalize
    from .export.onnx_export import onnx_top1
    from .timing import onnx_latency

    return dict(extra, stage=label, onnx_bytes=path.stat().st_size,
                latency_ms=onnx_latency(path, config.input.shape),
                top1=onnx_top1(path, normalize(data.test.images, mean, std), data.test.labels))


def chance_warning(info: dict[str, Any]) -> str | None:
    """The load stage's info → the line saying the trained model is at chance (None when it is not)."""
    if not at_chance(info["top1"], info["chance"]):
        return None
    return f"{near_chance_line(info['top1'], info['chance'], 'trained')}; the push goes on (latency only)"


class LoadStage(Stage):
    name = "load"
    title = "load + evaluate"
    # [train] is here because prune's fine-tuning reuses its settings; opset and input name shape the baseline
    reads = ("model", "data", "input", "train", "optimize.opset")
    unkeyed = ("train.device",)  # where torch runs does not change what it computes

    def files(self, config: Config) -> dict[str, Path]:
        """Checked here, before any key is computed: a missing input is one line naming its key."""
        return {"checkpoint": config.require_checkpoint(), "data": require_data(config)}

    def run(self, ctx: Context, out: Path) -> Output:
        from ..train.loop import top1
        from .export.onnx_export import export_onnx

        config = ctx.config
        data = load_data(config)
        model, meta = load_trained(config)
        check_interface(config, model)
        mean, std = normalization(config, data)
        ctx.say(f"loaded {config.model.arch} from {config.checkpoint.name}; evaluating on {len(data.test)} "
                "held-out images")
        if data.skipped:
            ctx.say(f"warning: skipped {len(data.skipped)} unreadable image(s) (data.skip_unreadable), e.g. "
                    f"{data.skipped[0]}")
        baseline = out / MODEL_BASELINE
        export_onnx(model, baseline, config.input.shape, opset=config.optimize.opset, input_name=config.input.name,
                    output=config.model.output)
        counts = count(model, config.input.shape)
        row = onnx_row("trained (FP32 baseline)", baseline, config, data, mean, std, **counts,
                       torch_top1=top1(model, data.test, mean, std, output=config.model.output))
        ctx.put("data", data)
        ctx.put("model", model)
        info = {"mean": mean, "std": std, "counts": counts, "top1": row["top1"], "torch_top1": row["torch_top1"],
                "test_images": len(data.test), "chance": chance_level(data.test.labels),
                "checkpoint_meta": {k: v for k, v in meta.items() if k != "pruning_history"},
                "pruning_history": meta.get("pruning_history")}
        return Output(rows=[row], info=info, files=[MODEL_BASELINE])

    def check(self, ctx: Context, info: dict[str, Any]) -> None:
        """The trained model at chance is said on every push, cached or not: pushing it stays allowed (its
        latency is still worth measuring), and the report repeats it (``records.report.model_warnings``)."""
        warning = chance_warning(info)
        if warning:
            ctx.say(f"warning: {warning}")

    def restore(self, ctx: Context, out: Path, info: dict[str, Any]) -> None:
        ctx.put("data", Lazy(lambda: load_data(ctx.config)))
        ctx.put("model", Lazy(lambda: load_trained(ctx.config)[0]))
