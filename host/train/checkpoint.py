"""Checkpoints are a state_dict plus JSON-able metadata, loaded with ``weights_only=True``.

No module is ever pickled: the architecture is rebuilt from the zoo (or the user's factory) named in
the metadata, so loading a checkpoint cannot execute code. The state_dict's own ``_metadata`` (each
module's version, which e.g. torchvision's MNASNet reads on load) is kept beside it as plain data. Users'
own files load too: a bare state_dict, one wrapped under a usual key ("state_dict", "model", ...), saved
from DataParallel ("module." prefixes) or a ``.safetensors`` file.
"""

from __future__ import annotations

import json
from collections import OrderedDict
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
    original = model.state_dict()
    state = {name: tensor.detach().cpu() for name, tensor in original.items()}  # trained on a GPU too
    versions = {prefix: dict(entry) for prefix, entry in getattr(original, "_metadata", {}).items()}
    torch.save({"state_dict": state, "meta": meta, "state_metadata": versions}, tmp)
    tmp.replace(path)


WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights", "module", "ema")


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state_dict (with its ``_metadata`` when the file has it) and edgekit's metadata ({} for users' files)."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path), {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the checkpoint ({exc.strerror or exc}); check the path and its "
                          "permissions") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on truncated, damaged or foreign files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a loadable weights-only checkpoint ({first}); it is damaged, or a pickled "
                          "model: save model.state_dict() with torch.save, or train again (`edgekit train`)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a {type(data).__name__}, not a state_dict; save model.state_dict()")
    if "state_dict" in data and "meta" in data:  # edgekit's own
        state, meta = data["state_dict"], data.get("meta")
        if not _is_state(state) or not isinstance(meta, dict):
            raise ConfigError(f"{path}: the checkpoint's state_dict holds values that are not tensors; save "
                              "model.state_dict()")
        return with_metadata(state, data.get("state_metadata")), dict(meta)
    return unwrap(path, data), {}


def unwrap(path: Path, data: dict) -> dict[str, torch.Tensor]:
    """A user's state_dict: bare, or under one of the usual keys, "module." prefixes (DataParallel) dropped."""
    state = data
    if not _is_state(state):
        inner = [key for key in WRAPPERS if isinstance(data.get(key), dict) and _is_state(data[key])]
        if not inner:
            raise ConfigError(f"{path}: no state_dict in it (keys: {', '.join(map(str, list(data)[:6]))}); "
                              f"expected a state_dict or one under {', '.join(repr(k) for k in WRAPPERS[:3])}")
        state = data[inner[0]]
    if state and all(key.startswith("module.") for key in state):
        stripped = OrderedDict((key[len("module."):], value) for key, value in state.items())
        versions = getattr(state, "_metadata", None)
        if versions is not None:
            stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
                (k[len("module."):] if k.startswith("module.") else "", v) for k, v in versions.items()
                if k != "")
        state = stripped
    return state


def _is_state(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def with_metadata(state: dict[str, torch.Tensor], versions: dict | None) -> dict[str, torch.Tensor]:
    """``state`` with the module versions recorded beside it (checkpoints before they were kept have none)."""
    if not versions or getattr(state, "_metadata", None):
        return state
    state = OrderedDict(state)
    state._metadata = OrderedDict((k, dict(v)) for k, v in versions.items())  # type: ignore[attr-defined]
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)"
                          ) from None
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ConfigError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


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
    if getattr(state, "_metadata", None) is None:  # a file without module versions: the model's own versions
        state = with_metadata(state, getattr(model.state_dict(), "_metadata", None))
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        detail = str(exc).replace("\n", " ")[:300]
        raise ConfigError(f"{path}: does not match model {arch} (width {width}, {num_classes} classes): "
                          f"{detail}") from None
    return model.eval(), meta
