"""Checkpoints are a state_dict plus JSON-able metadata, loaded with ``weights_only=True``.

No module is ever pickled: the architecture is rebuilt from the zoo (or the user's factory) named in
the metadata, so loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .models import create_model


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    json.dumps(meta)  # metadata must stay plain data
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}  # trained on a GPU too
    torch.save({"state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and metadata; any file that is not a whole weights-only checkpoint is one line naming it."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the checkpoint ({exc.strerror or exc}); check the path and its "
                          "permissions") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on truncated, damaged or foreign files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a loadable weights-only checkpoint ({first}); it is damaged or not a "
                          "torch state_dict: train again (`edgekit train`) or fix model.checkpoint") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        state, meta = data["state_dict"], data.get("meta", {})
    elif isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        state, meta = data, {}
    else:
        raise ConfigError(f"{path}: expected a state_dict or {{'state_dict': ..., 'meta': ...}}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()) or not isinstance(meta, dict):
        raise ConfigError(f"{path}: the checkpoint's state_dict holds values that are not tensors; save "
                          "model.state_dict()")
    return state, dict(meta)


def load_model(path: Path, arch: str, num_classes: int, width: float, in_channels: int) -> tuple[nn.Module, dict]:
    """Rebuild the architecture and load the weights; a shape mismatch names the first bad tensor."""
    state, meta = read_checkpoint(path)
    model = create_model(arch, num_classes=num_classes, width=width, in_channels=in_channels)
    if meta.get("pruning_history"):
        from ..optimize.prune.structured import apply_history

        try:
            apply_history(model, meta["pruning_history"], in_channels, int(meta.get("input_shape", [0, 32])[1]))
        except Exception as exc:  # noqa: BLE001 - a history from another model or edited by hand
            raise ConfigError(f"{path}: its pruning history does not apply to model {arch} ({type(exc).__name__}); "
                              "use the checkpoint `edgekit train` wrote, or fix model.arch") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).replace("\n", " ")[:300]
        raise ConfigError(f"{path}: does not match model {arch} (width {width}, {num_classes} classes): "
                          f"{detail}") from None
    return model.eval(), meta
