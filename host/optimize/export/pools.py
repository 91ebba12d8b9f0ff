"""Adaptive average pools the ONNX exporter refuses, rewritten for the export as two constant matrix products.

torchvision's VGG ends its features in ``AdaptiveAvgPool2d((7, 7))``: at 32×32 the features are 1×1, and the
TorchScript exporter refuses any output size that is not a factor of the input size ("Unsupported: ONNX export
of operator adaptive_avg_pool2d, output size that are not factor of input size"), so a model that trained fine
could not be pushed. The exported graph has a fixed image size (only the batch is dynamic), so each such pool is
a fixed linear map: output = R · x · Cᵀ, where row i of R averages input rows ⌊i·H/h⌋ … ⌈(i+1)·H/h⌉ − 1 (the
windows PyTorch's adaptive pooling uses) and C does the same for columns. That is two MatMuls with constant
weights, which every runtime edgekit targets runs, and exactly the pool's result. The user's model is changed
only for the duration of the export.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def window_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """``[size_out, size_in]``: row i averages the inputs of adaptive pooling's window i."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, math.ceil((i + 1) * size_in / size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class PoolByMatrices(nn.Module):
    """An adaptive average pool for one input size, as ``rows @ x @ columnsᵀ``."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", window_matrix(size_in[0], size_out[0]))
        self.register_buffer("columns", window_matrix(size_in[1], size_out[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.columns)


def _output_size(pool: nn.AdaptiveAvgPool2d, size_in: tuple[int, int]) -> tuple[int, int]:
    wanted = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size, pool.output_size)
    return tuple(size_in[k] if wanted[k] is None else int(wanted[k]) for k in range(2))  # type: ignore[return-value]


def unexportable_pools(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Adaptive average pools whose output size does not divide their input size on ``sample``: name → sizes."""
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveAvgPool2d):
            def record(module: nn.Module, inputs: tuple, _: object, name: str = name) -> None:
                size_in = tuple(int(v) for v in inputs[0].shape[-2:])
                size_out = _output_size(module, size_in)  # type: ignore[arg-type]
                if any(i % o for i, o in zip(size_in, size_out)):
                    seen[name] = (size_in, size_out)  # type: ignore[assignment]
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@contextmanager
def exportable_pools(model: nn.Module, sample: torch.Tensor) -> Iterator[list[str]]:
    """Within the block, the model's unexportable adaptive pools are ``PoolByMatrices``; yields their names."""
    pools = unexportable_pools(model, sample)
    swapped = []
    for name, (size_in, size_out) in pools.items():
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        swapped.append((parent, attribute, getattr(parent, attribute)))
        setattr(parent, attribute, PoolByMatrices(size_in, size_out).to(sample.device))
    try:
        yield list(pools)
    finally:
        for parent, attribute, original in swapped:
            setattr(parent, attribute, original)
