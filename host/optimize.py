"""``edgekit optimize``: checkpoint → (prune, fine-tune) → fold BN → ONNX → verify → evaluate every stage.

The result is cached under ``.edgekit/cache/<key>`` where the key hashes the checkpoint, the recipe
(the deploy.toml sections that change the artefacts), the data and edgekit's own code: re-pushing an
unchanged project does no host work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgekit.device import __version__
from edgekit.device.manifest import MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_QDQ, REFERENCE, sha256_file

from .checkpoint import load_model
from .config import Config
from .data import Dataset, channel_stats, load_dataset, normalize
from .errors import ConfigError
from .export import export_onnx, onnx_predict, onnx_top1, top1_of, verify_onnx
from .fold import fold_batchnorm, max_difference
from .latency import onnx_latency
from .quantize import quantize
from .train import top1

Say = Callable[[str], None]
RESULT = "optimize.json"


@dataclass
class Optimized:
    directory: Path
    files: dict[str, Path]
    stages: list[dict[str, Any]]
    host: dict[str, Any]
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def code_fingerprint() -> str:
    """Hash of edgekit's own source, so a code change invalidates cached artefacts even without a release."""
    digest = hashlib.sha256(__version__.encode())
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def recipe(config: Config) -> dict[str, Any]:
    """The configuration that determines the artefacts (devices and benchmark settings do not)."""
    return {"model": config.model.model_dump(mode="json", exclude={"checkpoint"}),
            "input": config.input.model_dump(mode="json"),
            "data": config.data.model_dump(mode="json", exclude={"path"}),
            "optimize": config.optimize.model_dump(mode="json"),
            "quantize": config.quantize.model_dump(mode="json")}


def cache_key(config: Config) -> str:
    payload = {"checkpoint": sha256_file(config.require_checkpoint()), "recipe": recipe(config),
               "data": data_fingerprint(config.data_path), "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def normalization(config: Config, data: Dataset) -> tuple[list[float], list[float]]:
    if config.data.mean is not None:
        return list(config.data.mean), list(config.data.std or [])
    return channel_stats(data.train)


def check_input_shape(config: Config, data: Dataset) -> None:
    if list(data.shape) != list(config.input.shape):
        raise ConfigError(f"{config.path.name}: input.shape {config.input.shape} does not match the data set's "
                          f"images {list(data.shape)}; set input.shape = {list(data.shape)}")


def load_data(config: Config) -> Dataset:
    if not config.data_path.exists():
        raise ConfigError(f"{config.path.name}: data.path: {config.data_path} does not exist; "
                          f"run `edgekit data digits {config.data.path}` for the demo data set or fix the path")
    data = load_dataset(config.data.format, config.data_path, tuple(config.input.shape[1:]))
    check_input_shape(config, data)
    return data


def load_project(config: Config) -> tuple[nn.Module, dict[str, Any], Dataset]:
    data = load_data(config)
    model, meta = load_model(config.require_checkpoint(), config.model.arch, config.model.num_classes,
                             config.model.width, config.input.shape[0])
    return model, meta, data


def count(model: nn.Module, shape: list[int]) -> dict[str, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *shape))
    return {"params": int(params), "macs": int(macs)}


def optimize(config: Config, say: Say = print, force: bool = False) -> Optimized:
    key = cache_key(config)
    directory = config.state_dir / "cache" / key[:24]
    result_file = directory / RESULT
    if result_file.is_file() and not force:
        saved = json.loads(result_file.read_text())
        say(f"optimised model is cached ({key[:12]}): no host work needed")
        files = {name: directory / name for name in saved["files"]}
        return Optimized(directory, files, saved["stages"], saved["host"], cached=True)
    shutil.rmtree(directory, ignore_errors=True)
    work = directory.with_name(directory.name + ".part")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = _run(config, work, say)
    result["host"]["cache_key"] = key
    (work / RESULT).write_text(json.dumps(result, indent=2))
    work.rename(directory)
    files = {name: directory / name for name in result["files"]}
    return Optimized(directory, files, result["stages"], result["host"], timings=result["timings"])


def _run(config: Config, work: Path, say: Say) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model, meta, data = load_project(config)
    mean, std = normalization(config, data)
    shape = config.input.shape
    say(f"loaded {config.model.arch} from {config.checkpoint.name}; evaluating on {len(data.test)} held-out images")
    stages = [dict(stage="trained (torch FP32)", **count(model, shape), top1=top1(model, data.test, mean, std))]
    timings["load_evaluate_s"] = time.perf_counter() - clock
    prune_info: dict[str, Any] = {}
    if config.prune.enabled:
        clock = time.perf_counter()
        model, prune_stages, prune_info = prune_stage(config, model, meta, data, mean, std, work, say)
        stages += prune_stages
        timings["prune_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sample = torch.from_numpy(normalize(data.test.images[:64], mean, std))
    if config.optimize.fold_bn:
        folded, n = fold_batchnorm(model)
        difference = max_difference(model, folded, sample)
        say(f"folded {n} BatchNorm layers into their convolutions (max output change {difference:.2g})")
        model = folded
    timings["fold_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    onnx_path = work / MODEL_FP32
    export_onnx(model, onnx_path, shape, opset=config.optimize.opset, input_name=config.input.name)
    difference = verify_onnx(model, onnx_path, sample.numpy())
    say(f"exported ONNX opset {config.optimize.opset}; ONNX Runtime matches torch (max diff {difference:.2g})")
    timings["export_s"] = time.perf_counter() - clock

    test_inputs = normalize(data.test.images, mean, std)
    logits = onnx_predict(onnx_path, test_inputs)
    fp32_top1 = top1_of(logits, data.test.labels)
    stages.append(dict(stage="ONNX FP32 (BN folded)", **count(model, shape), top1=fp32_top1,
                       onnx_bytes=onnx_path.stat().st_size, latency_ms=onnx_latency(onnx_path, shape)))
    samples = min(config.optimize.reference_samples, len(data.test))
    np.savez(work / REFERENCE, inputs=test_inputs[:samples], outputs=logits[:samples],
             labels=data.test.labels[:samples].astype(np.int64))
    files = [MODEL_FP32, REFERENCE]
    by_file = {MODEL_FP32: fp32_top1}
    quant_info: dict[str, Any] = {}
    if config.quantize.enabled:
        clock = time.perf_counter()
        quant = quantize(config, onnx_path, work, data, mean, std, fp32_top1, say)
        timings["quantize_s"] = time.perf_counter() - clock
        files += quant.files
        by_file.update(quant.accuracy)
        for name, label in ((MODEL_INT8_CPU, "ONNX INT8 CPU (U8S8)"), (MODEL_INT8_QDQ, "ONNX INT8 Q/DQ for TensorRT")):
            stages.append(dict(stage=label, **count(model, shape), top1=quant.accuracy[name],
                               onnx_bytes=(work / name).stat().st_size,
                               latency_ms=onnx_latency(work / name, shape)))
        quant_info = dict(quant.info, fp_layers=quant.excluded, sensitivity=quant.sensitivity[:10])
    host = {
        "edgekit_version": __version__, "checkpoint_sha256": sha256_file(config.checkpoint),
        "recipe": recipe(config), "normalization": {"mean": mean, "std": std, "scale": 1 / 255},
        "accuracy": {s["stage"]: s["top1"] for s in stages}, "accuracy_by_file": by_file,
        "calibration": quant_info, "pruning": prune_info, "test_images": len(data.test),
        "checkpoint_meta": {k: v for k, v in meta.items() if k != "pruning_history"},
    }
    return {"files": files, "stages": stages, "host": host, "timings": timings}


def onnx_stage(label: str, model: nn.Module, config: Config, data: Dataset, mean: list[float], std: list[float],
               work: Path) -> dict[str, Any]:
    """Fold, export to a scratch file and measure: one row of the stage table."""
    shape = config.input.shape
    folded, _ = fold_batchnorm(model)
    scratch = work / "stage.onnx"
    export_onnx(folded, scratch, shape, opset=config.optimize.opset, input_name=config.input.name)
    row = dict(stage=label, **count(model, shape),
               top1=onnx_top1(scratch, normalize(data.test.images, mean, std), data.test.labels),
               onnx_bytes=scratch.stat().st_size, latency_ms=onnx_latency(scratch, shape))
    scratch.unlink()
    return row


def prune_stage(config: Config, model: nn.Module, meta: dict[str, Any], data: Dataset, mean: list[float],
                std: list[float], work: Path, say: Say) -> tuple[nn.Module, list[dict], dict[str, Any]]:
    """Prune → fine-tune (iteratively), with a stage row per step; saves ``pruned.pt`` (history + weights)."""
    from .checkpoint import save_checkpoint
    from .data import Split, batches
    from .prune import PruneSpec, prune_model
    from .train import train

    section = config.prune
    rng = np.random.default_rng(config.train.seed)
    order = rng.permutation(len(data.train))
    cut = max(1, int(len(order) * section.validation_fraction))
    validation = Split(data.train.images[order[:cut]], data.train.labels[order[:cut]])
    fitting = Split(data.train.images[order[cut:]], data.train.labels[order[cut:]])
    baseline = top1(model, validation, mean, std)
    rows = [onnx_stage("original ONNX FP32", model, config, data, mean, std, work)]
    spec = PruneSpec(**{k: v for k, v in section.model_dump().items()
                        if k in PruneSpec.__dataclass_fields__ and k != "protect"},
                     protect=tuple(section.protect), augment=tuple(config.train.augment))

    def fit(net: nn.Module, step: int, loss_fn: Any, after_backward: Any) -> tuple[int, float]:
        epochs = section.sparsity_epochs if step == 0 else section.finetune_epochs
        budget = section.max_accuracy_drop
        stop = None
        if step > 0 and budget is not None and section.early_stop:
            stop = lambda epoch: top1(net, validation, mean, std) >= baseline - budget  # noqa: E731
        ran = train(net, fitting, mean, std, epochs=epochs, batch_size=config.train.batch_size, lr=section.lr,
                    momentum=config.train.momentum, weight_decay=config.train.weight_decay,
                    augment=tuple(config.train.augment), seed=config.train.seed + step, loss_fn=loss_fn,
                    after_backward=after_backward, stop=stop) if epochs else 0
        return ran, top1(net, validation, mean, std)

    example = torch.zeros(1, *config.input.shape)
    steps = prune_model(model, spec, example, lambda step: batches(fitting, 64, mean, std, shuffle=True, seed=step),
                        fit, say)
    for step in steps:
        snapshot = rebuild(config, step.history)
        snapshot.load_state_dict(step.state)
        row = onnx_stage(f"pruned step {step.step}/{spec.steps}", snapshot, config, data, mean, std, work)
        rows.append(dict(row, finetune_epochs=step.epochs, validation_top1=step.validation_top1))
    final = steps[-1]
    checkpoint_meta = dict(meta, pruning_history=final.history, pruned_from=config.model.arch,
                           input_shape=config.input.shape)
    save_checkpoint(work / "pruned.pt", model, checkpoint_meta)
    info = {"method": spec.method, "ratio": spec.ratio, "scope": spec.scope, "steps": spec.steps,
            "round_to": spec.round_to, "cost_weight": spec.cost_weight, "validation_baseline": baseline,
            "finetune_epochs": [s.epochs for s in steps]}
    return model.eval(), rows, info


def rebuild(config: Config, history: list[list]) -> nn.Module:
    """The pruned architecture from the factory plus a pruning history (no pickled modules)."""
    from .models import create_model
    from .prune import apply_history

    model = create_model(config.model.arch, config.model.num_classes, config.model.width, config.input.shape[0])
    return apply_history(model, history, config.input.shape[0], config.input.shape[1]).eval()
