"""The project's data set and model as deploy.toml names them, checked before any work, and `edgekit train`:
the model trained on that data set, scored on the held-out images, saved."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional

from ..config import Config, deploy_toml
from ..errors import ConfigError

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
    with progress(config.model.arch, total) as on_epoch:
        train(model, data.train, mean, std, epochs=total, batch_size=section.batch_size, lr=section.lr,
              momentum=section.momentum, weight_decay=section.weight_decay, augment=tuple(section.augment),
              seed=section.seed, device=resolve(section.device), amp=section.amp, output=config.model.output,
              progress=on_epoch)
    meta = {"arch": config.model.arch, "width": config.model.width, "num_classes": config.model.num_classes,
            "epochs": total, "top1": None, "mean": mean, "std": std}
    if distributed.is_main():  # under torchrun: rank 0 alone evaluates and writes, the others wait for it
        meta["top1"] = top1(model, data.test, mean, std, output=config.model.output)
        save_checkpoint(config.checkpoint, model.cpu(), meta)
    distributed.barrier()
    return Trained(meta, config.checkpoint, len(data.test))


def require_data(config: Config) -> Path:
    """The data set's path, or one line saying how to get the demo data (the cache key hashes this path)."""
    if not config.data_path.exists():
        raise ConfigError(f"{config.path.name}: data.path: {config.data_path} does not exist; "
                          f"run `edgekit data digits {config.data.path}` for the demo data set or fix the path")
    return config.data_path


def load_data(config: Config) -> Dataset:
    from .data import load_dataset

    require_data(config)
    data = load_dataset(config.data.format, config.data_path, tuple(config.input.shape[1:]))
    if list(data.shape) != list(config.input.shape):
        raise ConfigError(f"{config.path.name}: input.shape {config.input.shape} does not match the data set's "
                          f"images {list(data.shape)}; set input.shape = {list(data.shape)}")
    return data


def check_interface(config: Config, model: Any) -> None:
    """One image in, the classifier among the outputs: else one line naming the fix (before any work)."""
    import torch

    from ..outputs import check_classifier, check_single_input

    check_single_input(model)
    with torch.no_grad():
        result = model.eval()(torch.zeros(2, *config.input.shape))
    check_classifier(result, config.model.output, config.model.num_classes)


def starter(name: str, arch: str) -> dict[str, dict[str, Any]]:
    """What ``edgekit init`` writes: the demo data set (``edgekit data digits``), the rest as deploy.toml's defaults."""
    return {"project": {"name": name},
            "model": {"arch": arch, "width": 1.0, "num_classes": 10, "checkpoint": "runs/model.pt"},
            "data": {"format": "cifar", "path": "data/digits"},
            "input": {"shape": [3, 32, 32], "batch_sizes": [1, 32]},
            "train": {"epochs": 15, "augment": ["crop"]}}


def init_project(directory: Path, arch: str) -> Path:
    """``edgekit init``: a starter deploy.toml in ``directory`` for ``arch`` (a zoo model or module:function)."""
    from .models import list_models

    target = directory / "deploy.toml"
    if target.exists():
        raise ConfigError(f"{target} already exists; edit it or choose another directory")
    if ":" not in arch and arch not in list_models():
        raise ConfigError(f"--arch {arch!r}: unknown model; choose one of {', '.join(list_models())}")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(deploy_toml(**starter(directory.resolve().name or "model", arch)))
    return target
