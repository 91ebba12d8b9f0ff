"""The host pipeline: ``optimize(config)`` runs the declared stages, each cached on its own.

    load + evaluate → prune + fine-tune → fold BN → export + verify → calibrate + INT8 → QAT → evaluate

``STAGES`` is the declaration; each stage module says which deploy.toml sections and input files it
reads (see ``runner``). To add a stage, write a ``Stage`` subclass and put it in the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...device import __version__
from ..config import Config
from ..errors import CheckFailed
from ..train import distributed
from ..train.project import load_data
from .cache import StageCache
from .evaluate import EvaluateStage
from .export.stage import ExportStage
from .fingerprint import code_fingerprint, content_hash
from .fold.stage import FoldStage
from .load import LoadStage, chance_warning, count, normalization
from .prune.stage import PruneStage
from .quantize.qat_stage import QatStage
from .quantize.stage import CalibrateStage
from .runner import Context, Lazy, Output, Run, Stage, run_stages, stage_keys

Say = Callable[[str], None]

STAGES: tuple[Stage, ...] = (LoadStage(), PruneStage(), FoldStage(), ExportStage(), CalibrateStage(), QatStage(),
                             EvaluateStage())

__all__ = ["STAGES", "Context", "Lazy", "Optimized", "Output", "Stage", "code_fingerprint", "count", "load_data",
           "normalization", "optimize", "stage_keys"]


@dataclass
class Optimized:
    directory: Path
    files: dict[str, Path]
    stages: list[dict[str, Any]]
    host: dict[str, Any]
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    directories: dict[str, Path] = field(default_factory=dict)


def optimize(config: Config, say: Say = print, force: bool = False, stages: tuple[Stage, ...] = STAGES) -> Optimized:
    """Run (or restore) every stage; a re-run of an unchanged project loads nothing and computes nothing.

    With ``[train] nproc = N`` (outside torchrun) a training stage that is not cached is first computed by N
    DDP workers of `edgekit optimize`; this process then finds every stage cached.
    """
    if workers_needed(config, stages, force):
        say(f"training stages: starting {config.train.nproc} torch.distributed workers")
        code = distributed.launch(config.train.nproc, ["optimize", "--config", str(config.path)] +
                                  (["--force"] if force else []), output_to_stderr=True)
        if code != 0:
            raise CheckFailed(f"the {config.train.nproc} training workers ([train] nproc) failed with exit code "
                              f"{code}; their messages are above")
        force = False  # the workers computed every stage afresh; this process restores them
    run = run_stages(config, stages, say, force=force)
    mark_chosen(run.rows, run.ctx.info)
    if not run.ran:
        say(f"optimised model is cached ({run.keys[stages[-1].name][:12]}): no host work needed")
    return Optimized(run.directories[stages[-1].name], dict(run.ctx.files), run.rows, host_summary(config, run),
                     cached=not run.ran, timings=run.timings, keys=run.keys,
                     directories=run.directories)


def workers_needed(config: Config, stages: tuple[Stage, ...], force: bool) -> bool:
    """``[train] nproc`` > 1 outside torchrun, and a stage that would train under DDP is not cached yet."""
    if config.train.nproc <= 1 or distributed.active():
        return False
    if force:
        return any(stage.distributed and stage.trains(config) for stage in stages)
    cache = StageCache(config.state_dir / "cache")
    return any(stage.distributed and stage.trains(config) and cache.load(stage.name, key) is None
               for stage, key in zip(stages, stage_keys(config, stages)))


def mark_chosen(rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """When QAT ran, its choice among every INT8 route (PTQ's rows included) is the one marked chosen:
    the calibrate stage marked its own best before QAT could beat it."""
    chosen = info.get("qat", {}).get("chosen") if info.get("qat", {}).get("enabled") else None
    for row in rows if chosen else []:
        if "chosen" in row:
            row["chosen"] = row["stage"] == chosen


def host_summary(config: Config, run: Run) -> dict[str, Any]:
    """What the manifest carries about the host side: accuracy of every stage and file, calibration, pruning."""
    from ...device.contract.manifest import MODEL_BASELINE, MODEL_FP32
    from .prevalidate import REFERENCE_RUNTIME

    info = run.ctx.info
    load, calibrate = info["load"], info.get("calibrate", {})
    if info.get("qat", {}).get("enabled"):  # QAT ran: its choice (QAT or the PTQ route it beat) is what ships
        calibrate = info["qat"]
    by_file = {MODEL_BASELINE: load["top1"], MODEL_FP32: info["export"]["top1"]}
    by_file.update(info.get("evaluate", {}).get("accuracy", {}))
    recipe = {name: section for name, section in config.model_dump(mode="json").items()
              if name in ("model", "input", "data", "train", "optimize", "prune", "quantize")}
    return {
        "edgekit_version": __version__, "checkpoint_sha256": content_hash(config.checkpoint), "recipe": recipe,
        "normalization": {"mean": load["mean"], "std": load["std"], "scale": 1 / 255},
        "accuracy": {row["stage"]: row["top1"] for row in run.rows if row.get("top1") is not None},
        "accuracy_by_file": by_file,
        "calibration": {k: v for k, v in calibrate.items() if k not in ("enabled", "accuracy")}
        if calibrate.get("enabled") else {},
        "pruning": info.get("prune", {}) if info.get("prune", {}).get("enabled", True) else {},
        "test_images": load["test_images"], "checkpoint_meta": load["checkpoint_meta"],
        "cache_key": run.keys[list(run.keys)[-1]], "stage_keys": {k: v[:16] for k, v in run.keys.items()},
        "folding": info["export"].get("folding", {}), "outputs": info["export"].get("outputs", ["logits"]),
        "reference_runtime": REFERENCE_RUNTIME,
        "int8_slower_than_fp32": info.get("evaluate", {}).get("int8_slower_than_fp32", {}),
        "chance_warning": chance_warning(load),
    }
