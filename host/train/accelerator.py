"""Where torch work runs on the host: ``[train] device`` ("auto": CUDA when torch sees a GPU, else CPU)
and optional mixed precision (``[train] amp``).

Training, pruning (importance, fine-tuning, distillation) and torch-side evaluation all go through
here, so a host with a GPU uses it without any other change; export, folding and ONNX work stay on the CPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


def resolve(name: str = "auto") -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" → a device torch can use now, or one line saying why not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r} is not a device; use \"auto\", \"cpu\" or \"cuda[:N]\"") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r} but this torch ({torch.__version__}) sees no CUDA device; "
                              "use \"auto\" (falls back to the CPU) or install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ConfigError(f"train.device = {name!r}: edgekit trains on \"cpu\" or \"cuda[:N]\"")
    return device


def device_of(model: nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a parameterless model)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool) -> Any:
    """Mixed precision: float16 on CUDA (with a gradient scaler), bfloat16 on the CPU."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def grad_scaler(device: torch.device, enabled: bool) -> Any:
    """float16 gradients underflow without loss scaling; bfloat16 (CPU) needs none.
    (``torch.amp.GradScaler`` is torch ≥ 2.3; before, CUDA's own, which is the only one used.)"""
    on = enabled and device.type == "cuda"
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=on)
    return torch.cuda.amp.GradScaler(enabled=on)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"
