"""A model's inputs and outputs as edgekit sees them: which output is the classifier, which layers produce
the outputs, and whether ``forward`` wants more than one image tensor.

Users' models return a tensor, a tuple (logits + auxiliary heads, an embedding + logits) or a dict;
``model.output`` names the classifier's output (an index, or a key of a dict). Training, evaluation and
pruning look at that output; export writes it first (named ``logits``) and the others after it, so the
device and every ONNX consumer find the classifier at output 0.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from .errors import ConfigError

OutputKey = Union[int, str]


def named_outputs(result: Any) -> list[tuple[str, torch.Tensor]]:
    """A forward result as (name, tensor) pairs: ``0`` for a lone tensor, indices for tuples, keys for dicts."""
    if isinstance(result, torch.Tensor):
        return [("0", result)]
    if isinstance(result, (tuple, list)):
        pairs = []
        for index, item in enumerate(result):
            if not isinstance(item, torch.Tensor):
                raise ConfigError(f"model output {index} is a {type(item).__name__}, not a tensor; return tensors "
                                  "only (a tuple of tensors or a dict of tensors)")
            pairs.append((str(index), item))
        return pairs
    if isinstance(result, dict):
        pairs = []
        for key, item in result.items():
            if not isinstance(item, torch.Tensor):
                raise ConfigError(f"model output {key!r} is a {type(item).__name__}, not a tensor")
            pairs.append((str(key), item))
        return pairs
    raise ConfigError(f"the model returns a {type(result).__name__}; edgekit needs a tensor, a tuple or a dict of "
                      "tensors")


def select(result: Any, which: OutputKey = 0) -> torch.Tensor:
    """The classifier's output out of a forward result."""
    if isinstance(result, torch.Tensor) and which in (0, "0"):
        return result
    pairs = named_outputs(result)
    names = [name for name, _ in pairs]
    if str(which) not in names:
        raise ConfigError(f"model.output = {which!r}: the model's outputs are {', '.join(names)}; "
                          "set model.output to the classifier's")
    return pairs[names.index(str(which))][1]


def check_classifier(result: Any, which: OutputKey, num_classes: int) -> None:
    """The selected output must be [batch, num_classes]; else say which output would be."""
    pairs = named_outputs(result)
    chosen = select(result, which)
    if chosen.dim() == 2 and chosen.shape[1] == num_classes:
        return
    fitting = [name for name, tensor in pairs if tensor.dim() == 2 and tensor.shape[1] == num_classes]
    hint = (f"set model.output = {_key(fitting[0])} (that output has {num_classes} values)" if fitting
            else "fix model.num_classes or the model")
    raise ConfigError(f"model output {which!r} has shape {list(chosen.shape)} but model.num_classes = {num_classes}; "
                      f"{hint}")


def _key(name: str) -> str:
    return name if name.isdigit() else repr(name)


class Classifier(nn.Module):
    """The model with only its classifier output: what training, evaluation and distillation call."""

    def __init__(self, model: nn.Module, which: OutputKey = 0) -> None:
        super().__init__()
        self.model = model
        self.which = which

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select(self.model(x), self.which)


class ExportOrder(nn.Module):
    """Every output as a flat tuple, the classifier first: the ONNX graph's output order."""

    def __init__(self, model: nn.Module, which: OutputKey = 0) -> None:
        super().__init__()
        self.model = model
        self.which = str(which)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = named_outputs(self.model(x))
        ordered = [t for n, t in pairs if n == self.which] + [t for n, t in pairs if n != self.which]
        return tuple(ordered)


def export_names(model: nn.Module, example: torch.Tensor, which: OutputKey = 0) -> list[str]:
    """ONNX output names: ``logits``, then ``output_<name>`` for the others."""
    with torch.no_grad():
        pairs = named_outputs(model.eval()(example))
    return ["logits"] + [f"output_{name}" for name, _ in pairs if name != str(which)]


def check_single_input(model: nn.Module) -> None:
    """edgekit feeds one image tensor; a second *required* input is one clear line, optional ones are fine."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional[1:] if p.default is p.empty]
    required += [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required:
        raise ConfigError(f"{type(model).__name__}.forward needs more than the image: {', '.join(required)}; "
                          "edgekit pushes single-input models: give the extra input(s) a default (None) or wrap "
                          "the model in a module whose forward takes only the image")


def trace(model: nn.Module, example: torch.Tensor, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)
          ) -> tuple[dict[Any, str], list[Any]]:
    """One forward pass with autograd on: {grad_fn of each layer's output: layer name}, and the grad_fns
    of the model's outputs (the roots to walk back from)."""
    producers: dict[Any, str] = {}

    def remember(name: str):
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                producers[output.grad_fn] = name
        return hook

    hooks = [module.register_forward_hook(remember(name)) for name, module in model.named_modules()
             if isinstance(module, kinds)]
    try:
        with torch.enable_grad():
            result = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return producers, [tensor.grad_fn for _, tensor in named_outputs(result) if tensor.grad_fn is not None]


def autograd_nodes(roots: list[Any], stop: Callable[[Any], bool] = lambda node: False) -> Iterator[Any]:
    """Each node of the autograd graph below ``roots`` once, depth first; a node for which ``stop`` is true
    is yielded but not walked past."""
    seen: set[Any] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        if not stop(node):
            stack.extend(next_node for next_node, _ in node.next_functions)


def nearest_producers(roots: list[Any], producers: dict[Any, str]) -> list[str]:
    """Walking back from ``roots``, the first layers met on every path."""
    found: list[str] = []
    for node in autograd_nodes(roots, stop=lambda n: n in producers):
        if node in producers and producers[node] not in found:
            found.append(producers[node])
    return found


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the layers whose outputs reach the model's outputs with no other such layer in between.

    Found from the autograd graph of one forward pass (what actually produces each output), not from
    registration order: a classifier defined first in ``__init__`` is still found.
    """
    producers, roots = trace(model, example)
    return nearest_producers(roots, producers)
