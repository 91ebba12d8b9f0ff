"""Which pruning groups can torch-pruning follow? Found by trying, on a copy, with a check that cannot lie.

torch-pruning maps channel indices through the traced graph; code it cannot follow (a ``view`` to
hard-coded sizes, a channel shuffle, attention that splits and transposes channels) either breaks the
forward pass or — worse — runs with the wrong channels paired up. The probe detects both:

1. on a copy of the model, zero the channels each group would remove (their producers' weights,
   biases and BatchNorm affine terms) and record the outputs on a real batch — the same function,
   as those channels now carry zeros;
2. remove those channels and run the batch again: where torch-pruning followed the data flow the
   outputs are unchanged (only zeros were removed); an error, a changed shape or changed values
   means it did not.

When the whole model fails, bisection over the groups names the culprits, which are then protected.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ...outputs import autograd_nodes, named_outputs, nearest_producers, trace
from ...progress import ticker

# Autograd ops that mix channels with each other or with positions: torch-pruning cannot map indices
# through them (on attention its index mapping does not even terminate), so their inputs' producers
# are protected before torch-pruning sees the groups.
MIXING_OPS = ("BmmBackward", "BaddbmmBackward", "UnbindBackward", "AttentionBackward", "EinsumBackward")


def _is_mixing(node: Any) -> bool:
    name = type(node).__name__
    if name.startswith(MIXING_OPS):
        return True
    if name.startswith("MmBackward"):  # activation @ activation (a Linear's weight is a leaf)
        return not any(type(n).__name__ == "AccumulateGrad" or (n is not None and "TBackward" in type(n).__name__
                                                                and _leaf_below(n)) for n, _ in node.next_functions)
    return False


def _leaf_below(node: Any) -> bool:
    return any(type(n).__name__ == "AccumulateGrad" for n, _ in node.next_functions)


# Autograd ops whose channel sizes are Python numbers in the user's code (``x.split([1, d, d], dim=1)``, as
# MobileViTv2's q/k/v): after pruning their producer the sizes no longer add up. The probe would find
# that too, but torch-pruning maps channels through such a split slowly (28 s per group for a
# 257-channel one; the probe's bisection maps it dozens of times: 15 minutes without a line on
# mobilevitv2_050), so their producers are protected before it sees the groups.
FIXED_SIZE_OPS = ("SplitWithSizesBackward",)


def _why_unprunable(node: Any) -> str:
    """Why the producers feeding ``node`` cannot be pruned; '' when they can."""
    op = type(node).__name__.replace("Backward0", "").replace("Backward", "")
    if type(node).__name__.startswith(FIXED_SIZE_OPS):
        return "feeds split_with_sizes: the split sizes are fixed in the code, so removed channels break it"
    if _is_mixing(node):
        return f"feeds {op}: channels mixed in a way torch-pruning cannot map"
    return ""


def channel_mixers(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Layers feeding an op torch-pruning cannot map channels through (attention's matmuls, unbind of a
    q/k/v split, a split to sizes fixed in the code)."""
    producers, roots = trace(model, example)
    found: dict[str, str] = {}
    for node in autograd_nodes(roots):
        reason = _why_unprunable(node)
        for name in nearest_producers([n for n, _ in node.next_functions], producers) if reason else []:
            found.setdefault(name, reason)
    return found


@dataclass
class Verdict:
    ok: bool
    reason: str = ""


def _indices(idxs: Sequence[Any]) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


@torch.no_grad()
def zero_channels(group: Any, graph: Any) -> None:
    """Make the channels of a pruning group carry zeros: every out-channel member's weights/biases."""
    for dep, idxs in group:
        if not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        module, index = dep.target.module, _indices(idxs)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.affine:
                module.weight[index] = 0
                module.bias[index] = 0
            else:
                module.running_mean[index] = 0
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            per_group = module.out_channels // module.groups
            for channel in index:
                group_index, within = divmod(channel, per_group)
                rows = slice(group_index * module.in_channels // module.groups,
                             (group_index + 1) * module.in_channels // module.groups)
                module.weight[rows, within] = 0
            if module.bias is not None:
                module.bias[index] = 0
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            module.weight[index] = 0
            if module.bias is not None:
                module.bias[index] = 0
        elif isinstance(module, nn.PReLU) and module.num_parameters > 1:
            continue  # PReLU(0) = 0
        elif hasattr(module, "weight") and isinstance(module.weight, torch.Tensor):
            module.weight[index] = 0
            if getattr(module, "bias", None) is not None:
                module.bias[index] = 0


def compare_outputs(before: Any, after: Any, rtol: float = 1e-3) -> str:
    """'' when every output kept its shape and values, else what changed."""
    old, new = named_outputs(before), named_outputs(after)
    if len(old) != len(new):
        return f"the model now returns {len(new)} outputs instead of {len(old)}"
    for (name, a), (_, b) in zip(old, new):
        if a.shape != b.shape:
            return f"output {name} changed shape from {list(a.shape)} to {list(b.shape)}"
        scale = float(a.abs().max()) or 1.0
        difference = float((a - b).abs().max())
        if difference > rtol * scale:
            return f"output {name} changed by {difference:.3g} (channels no longer line up)"
    return ""


CROSS_CHANNEL_NORMS = (nn.GroupNorm, nn.LayerNorm)  # a channel's output depends on the other channels
Cut = tuple[nn.Module, Callable, list[int]]  # root layer, torch-pruning's out-channel function, indices
Plan = Callable[[nn.Module, Any, list[str]], list[Cut]]


def try_groups(model: nn.Module, batch: torch.Tensor, names: list[str], plan: Plan,
               build: Callable[[nn.Module], Any]) -> Verdict:
    """Prune the named groups of a copy as planned and check the outputs (see the module docstring).

    ``build(model)`` returns torch-pruning's dependency graph; ``plan(model, graph, names)`` returns the
    cuts each named group would make. Groups are re-derived right before each removal: an earlier
    removal shifts the indices of a later group inside a concatenation.
    """
    probe = copy.deepcopy(model).eval()
    mixing: set[str] = set()
    try:
        graph = build(probe)
        cuts = plan(probe, graph, names)
        planned = [(root, graph.get_out_channels(root) - len(set(idxs))) for root, _, idxs in cuts]
        for root, function, idxs in cuts:
            group = graph.get_pruning_group(root, function, idxs)
            if not graph.check_pruning_group(group):
                return Verdict(False, "torch-pruning would remove every channel of a layer in this group")
            zero_channels(group, graph)
            mixing |= {type(dep.target.module).__name__ for dep, _ in group
                       if isinstance(dep.target.module, CROSS_CHANNEL_NORMS)}
        with torch.no_grad():
            before = probe(batch)
        for root, function, idxs in cuts:
            graph.get_pruning_group(root, function, idxs).prune()
        with torch.no_grad():
            after = probe(batch)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return Verdict(False, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]}")
    change = compare_outputs(before, after) or overcut(graph, planned)
    if change and mixing:  # not a wrong mapping: the statistics of the remaining channels changed
        change = (f"{'/'.join(sorted(mixing))} normalises across channels, so removing even all-zero channels "
                  "changes the others")
    return Verdict(not change, change)


def overcut(graph: Any, planned: list[tuple[nn.Module, int]]) -> str:
    """'' when every pruned root kept the width it was cut to, else which did not.

    torch-pruning can tie a channel to others (GhostNet concatenates a layer with a depthwise conv of
    itself, then slices to width): the cut grows, the function survives (the probe's outputs match) but
    the widths do not — ghostnet_100 then failed "would leave a layer empty", and misaligned widths
    broke ``round_to``."""
    for root, kept in planned:
        width = graph.get_out_channels(root)
        if width != kept:
            return f"cut to {width} channels, not the {kept} asked for: torch-pruning ties its channels to others"
    return ""


def culprits(model: nn.Module, batch: torch.Tensor, names: list[str], plan: Plan,
             build: Callable[[nn.Module], Any], limit: int = 64,
             say: Callable[[str], None] | None = None) -> tuple[dict[str, str], Verdict]:
    """The groups that break the model, by bisection; and the verdict for all groups together.
    ``say`` hears how far the bisection got every few seconds (each try prunes a copy of the model)."""
    whole = try_groups(model, batch, names, plan, build)
    if whole.ok:
        return {}, whole
    found: dict[str, str] = {}
    tried = [0]
    tick = ticker(say, f"pruning probe: looking for the groups that break the model among {len(names)}",
                  max(1, 2 * len(names)), "tries")

    def search(subset: list[str], verdict: Verdict) -> None:
        if verdict.ok or len(found) >= limit:
            return
        if len(subset) == 1:
            found[subset[0]] = verdict.reason
            return
        half = len(subset) // 2
        for part in (subset[:half], subset[half:]):
            tried[0] += 1
            tick(tried[0])
            search(part, try_groups(model, batch, part, plan, build))

    search(list(names), whole)
    return found, whole
