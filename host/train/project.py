"""The project's data set and model as deploy.toml names them, checked before any work, and `edgekit train`:
the model trained on that data set, scored on the held-out images, saved."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional

from ..config import Config, deploy_toml
from ..errors import ConfigError, Interrupted

if TYPE_CHECKING:  # the loop imports torch: `edgekit train --help` must not pay for it
    from .data import Dataset
    from .loop import Progress

# (model name, epochs) → a context around the training whose value is called after every epoch
ProgressBar = Callable[[str, int], ContextManager["Progress"]]


@dataclass
class Trained:
    meta: dict[str, Any]  # what the checkpoint records: arch, width, classes, epochs, top1, mean, std
    checkpoint: Path
    test_images: int
    warning: Optional[str] = None  # held-out top-1 near chance: what to change
    hint: Optional[str] = None  # held-out top-1 far below what the data allows: the likely cause, what to change
    skipped: int = 0  # unreadable images left out (data.skip_unreadable)


@contextmanager
def no_progress(name: str, epochs: int) -> Iterator[Progress]:
    yield lambda epoch, epochs, loss: None


def train_project(config: Config, epochs: Optional[int] = None, progress: ProgressBar = no_progress) -> Trained:
    """Train ``[model]`` on ``[data]`` with ``[train]`` (``epochs`` overrides train.epochs), write model.checkpoint."""
    from . import distributed
    from .accelerator import resolve
    from .checkpoint import save_checkpoint
    from .data import channel_stats
    from .loop import top1, train
    from .models import create_model

    data = load_data(config)
    mean, std = (config.data.mean, config.data.std) if config.data.mean else channel_stats(data.train)
    import torch

    torch.manual_seed(config.train.seed)  # the initial weights too: train.seed makes a training repeatable
    model = create_model(config.model.arch, config.model.num_classes, config.model.width, config.input.shape[0])
    section = config.train
    check_interface(config, model)
    total = epochs or section.epochs
    losses: list[float] = []  # per epoch, for the hint when the training ends low
    with progress(config.model.arch, total) as on_epoch, Interrupted.during("training (nothing was saved)"):
        def record(epoch: int, epochs: int, loss: float) -> None:
            losses.append(loss)
            on_epoch(epoch, epochs, loss)

        train(model, data.train, mean, std, epochs=total, batch_size=section.batch_size, lr=section.lr,
              momentum=section.momentum, weight_decay=section.weight_decay, augment=tuple(section.augment),
              seed=section.seed, device=resolve(section.device), amp=section.amp, output=config.model.output,
              progress=record)
    meta = {"arch": config.model.arch, "width": config.model.width, "num_classes": config.model.num_classes,
            "epochs": total, "top1": None, "mean": mean, "std": std}
    if distributed.is_main():  # under torchrun: rank 0 alone evaluates and writes, the others wait for it
        meta["top1"] = top1(model, data.test, mean, std, output=config.model.output)
        save_checkpoint(config.checkpoint, model.cpu(), meta)
    distributed.barrier()
    warning = near_chance(meta["top1"], data.test.labels, "trained") if meta["top1"] is not None else None
    hint = low_training_hint(config, model, data, mean, std, meta["top1"], losses, total)
    return Trained(meta, config.checkpoint, len(data.test), warning=warning, hint=hint, skipped=len(data.skipped))


def low_training_hint(config: Config, model: Any, data: Dataset, mean: list[float], std: list[float],
                      held_out: Optional[float], losses: list[float], epochs: int) -> Optional[str]:
    """``diagnose.training_hint`` for a training that ended far below what the data allows; the eval pass
    over (up to ``HINT_IMAGES`` of) the training images is paid only then."""
    from .data import Split
    from .diagnose import Recipe, far_below, training_hint
    from .loop import top1

    chance = chance_level(data.test.labels) if held_out is not None else 0.0
    if held_out is None or not losses or not far_below(held_out, chance):
        return None
    sample = Split(data.train.images[:HINT_IMAGES], data.train.labels[:HINT_IMAGES])
    section = config.train
    recipe = Recipe(epochs, section.lr, section.batch_size, section.weight_decay, tuple(section.augment))
    return training_hint(held_out, top1(model, sample, mean, std, output=config.model.output), losses, chance,
                         config.model.num_classes, recipe)


HINT_IMAGES = 2048  # training images scored in eval mode for the hint: enough to tell 30 % from 90 %


def chance_level(labels: Any) -> float:
    """Top-1 of always answering the commonest held-out class (1/classes on a balanced set)."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / max(1, counts.sum()))


def at_chance(accuracy: float, chance: float) -> bool:
    """Within a tenth of the way from chance to perfect (19 % on ten balanced classes): the model answers
    (almost) at random, and pruning or INT8 'keeping' its accuracy would mean nothing."""
    from .diagnose import learnt

    return learnt(accuracy, chance) < 0.1


def near_chance(accuracy: float, labels: Any, what: str) -> Optional[str]:
    """A warning naming what to change when ``accuracy`` is at chance on ``labels`` (``at_chance``), else None."""
    chance = chance_level(labels)
    return "warning: " + near_chance_line(accuracy, chance, what) if at_chance(accuracy, chance) else None


def near_chance_line(accuracy: float, chance: float, what: str) -> str:
    return (f"the {what} model's held-out top-1 {accuracy:.1%} is near chance ({chance:.1%}): it has "
            "not learnt the task. Lower train.lr (e.g. 0.01), raise train.epochs, or check the data set's labels "
            "and data.mean/std before pruning or quantising it")


def require_data(config: Config) -> Path:
    """The data set's path, or one line saying how to get the demo data (the cache key hashes this path)."""
    if not config.data_path.exists():
        raise ConfigError(f"{config.path.name}: data.path: {config.data_path} does not exist; "
                          f"run `edgekit data digits {config.data.path}` for the demo data set or fix the path")
    return config.data_path


def load_data(config: Config) -> Dataset:
    from .data import load_dataset

    require_data(config)
    data = load_dataset(config.data.format, config.data_path, tuple(config.input.shape[1:]),
                        config.data.skip_unreadable)
    labels = max(int(data.train.labels.max()), int(data.test.labels.max())) + 1
    if labels > config.model.num_classes:
        raise ConfigError(f"{config.path.name}: model.num_classes = {config.model.num_classes}, but the data set "
                          f"{config.data_path} has {labels} classes; set model.num_classes = {labels}")
    if list(data.shape) != list(config.input.shape):
        raise ConfigError(f"{config.path.name}: input.shape {config.input.shape} does not match the data set's "
                          f"images {list(data.shape)}; set input.shape = {list(data.shape)}")
    return data


def check_interface(config: Config, model: Any) -> None:
    """One image in, the classifier among the outputs: else one line naming the fix (before any work)."""
    import torch

    from ..outputs import check_classifier, check_single_input
    from .models import first_line

    check_single_input(model)
    shape = list(config.input.shape)
    try:
        with torch.no_grad():
            result = model.eval()(torch.zeros(2, *shape))
    except Exception as exc:  # noqa: BLE001 - whatever the user's forward raises on this size
        raise ConfigError(f"model {config.model.arch!r} does not run on images of input.shape = {shape} "
                          f"({first_line(exc)}); "
                          "set input.shape to the size it was built for (and give it images of that size), or "
                          "build it for this size in a model.arch = \"module:function\" of your own that calls its "
                          "factory with the size") from None
    check_classifier(result, config.model.output, config.model.num_classes)


def starter(name: str, arch: str) -> dict[str, dict[str, Any]]:
    """What ``edgekit init`` writes: the whole chain (prune 50 %, fine-tune, INT8 calibration) on the
    demo data set (``edgekit data digits``), with the demo project's recipe, which passes its budgets for the
    zoo's ResNet-20 ×2 (99.2–99.4 % top-1, pruned + INT8 within 1 point: see deploy.toml); the device at
    ``precision = "auto"``."""
    return {"project": {"name": name},
            "model": {"arch": arch, "width": 2.0 if ":" not in arch else 1.0, "num_classes": 10,
                      "checkpoint": "runs/model.pt"},
            "data": {"format": "cifar", "path": "data/digits"},
            "input": {"shape": [3, 32, 32], "batch_sizes": [1, 32]},
            "train": {"epochs": 6, "batch_size": 64, "lr": 0.05, "augment": ["crop"]},
            "prune": {"enabled": True, "ratio": 0.5, "round_to": 16, "finetune_epochs": 6, "early_stop": False,
                      "max_accuracy_drop": 0.01},
            "quantize": {"method": "percentile", "max_accuracy_drop": 0.01},
            # the device builds the pruned model at every precision it can, validates each and ships the fastest
            "devices": {"local": {"kind": "local", "backend": "auto", "precision": "auto"}}}


# Appended to the starter deploy.toml: the second device a new user adds (README, "Adding a real device").
JETSON_EXAMPLE = """
# A Jetson reached over SSH (README, "Adding a real device"): uncomment, then `edgekit device setup jetson`.
# [devices.jetson]
# host = "jetson.local"
# user = "nvidia"
# backend = "tensorrt"
# precision = "auto"
"""


def init_project(directory: Path, arch: str) -> Path:
    """``edgekit init``: a starter deploy.toml in ``directory`` for ``arch`` (a zoo model or module:function)."""
    from .models import list_models

    target = directory / "deploy.toml"
    if target.exists():
        raise ConfigError(f"{target} already exists; edit it or choose another directory")
    if ":" not in arch and arch not in list_models():
        raise ConfigError(f"--arch {arch!r}: unknown model; choose one of {', '.join(list_models())}")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(deploy_toml(**starter(directory.resolve().name or "model", arch)) + JETSON_EXAMPLE)
    return target
