"""What cutting a group costs in accuracy, on a scale shared by every group: the latency search's other half.

A latency search trades accuracy lost against milliseconds saved across groups, so the two must be comparable
from one group to the next. torch-pruning's channel scores are not: they are normalised by each group's mean,
so one channel of a residual stream (feeding every block of a stage) "costs" what one channel inside a block
costs, while removing it saves the time of every layer it feeds. A search on those scores cuts the residual
streams first and loses far more accuracy than uniform pruning at the same latency (issue 24's first run at
scale: ResNet-20 ×4, stage-1 stream cut from 64 to 8 channels, up to 32 points below uniform).

So the cost of a group at a width is measured (``measured_costs``): the model's cross-entropy on real training
images with that group's lowest-scoring channels masked (their producers' weights, biases and running means
set to zero: exactly what removing them does downstream), minus the unmasked loss. Groups are measured one at a
time at the latency grid's widths and interpolated between (``cost_at``); the search assumes the costs add up,
as the latency model assumes layer times do. Which channels go within a group stays the scores' choice, as
the prune stage then cuts them. ``magnitude_costs`` turns scores into the same form when no images are at hand.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional

Curve = list[tuple[int, float]]  # (width, accuracy cost), widest first; the full width costs 0
SENSITIVITY_IMAGES = 128  # training images per loss: paired (the same images at every width), so few suffice
MIN_IMAGES = 16  # ... and never fewer, whatever the budget
COST_BUDGET_S = 120.0  # a push's share for measuring costs: large inputs (224×224) get fewer images, not hours
UNMEASURED = 1e9  # the cost of cutting a group that could not be masked: no latency saving is worth it


def regular(points: Mapping[int, float]) -> Curve:
    """A curve from measured (width → cost), widest first, that never gets cheaper per channel as channels go:
    never negative (noise on a few images can make a small cut look like a gain) and convex (each unit cut costs
    at least what the previous unit cost, since channels go lowest-ranked first). Convexity also continues the
    curve past the width where the uncorrected model breaks down: there the loss saturates, and a curve that went
    flat would make every further cut look free."""
    widths = sorted(points, reverse=True)
    rising = [max(0.0, *(float(points[w]) for w in widths[:i + 1])) for i in range(len(widths))]
    curve = [(int(widths[0]), rising[0])]
    slope = 0.0
    for i in range(1, len(widths)):
        slope = max(slope, (rising[i] - rising[i - 1]) / (widths[i - 1] - widths[i]))
        curve.append((int(widths[i]), curve[-1][1] + slope * (widths[i - 1] - widths[i])))
    return curve


def cost_at(curve: Optional[Curve], full: int, width: int) -> float:
    """A group's cost at ``width``: linear between the curve's widths, held at its narrowest; without a curve,
    the channels removed (every channel alike)."""
    if not curve:
        return float(full - width)
    if width >= curve[0][0]:
        return curve[0][1]
    for (w0, c0), (w1, c1) in zip(curve, curve[1:]):
        if width >= w1:
            return c1 + (c0 - c1) * (width - w1) / (w0 - w1)
    return curve[-1][1]


def magnitude_costs(scores: Mapping[str, list[float]], spaces: Mapping[str, Any]) -> dict[str, Curve]:
    """Scores as curves, at every width of a group's space (``GroupSpace``): a width costs the sum of the channel
    scores its cut removes, lowest first (per channel group, as they are cut together). Comparable across groups
    only as far as the scores are."""
    curves = {}
    for name, values in scores.items():
        space = spaces.get(name)
        if space is None:
            continue
        ranked = sorted(values)
        per = max(1, space.width // max(1, len(ranked)))
        curves[name] = [(w, float(sum(ranked[:(space.width - w) // per])))
                        for w in range(space.width, space.floor - 1, -max(1, space.unit))]
    return curves


def measured_costs(model: Any, graph: Any, groups: list[Any], scores: Mapping[str, Any],
                   widths: Mapping[str, list[int]], images: Any, labels: Any, output: Any = 0,
                   budget_s: float = COST_BUDGET_S) -> dict[str, Curve]:
    """Each group's curve at ``widths[name]``: loss with its lowest-scoring channels masked, minus the loss of
    the model as it is (the mean cross-entropy on ``images``). Fewer images (down to MIN_IMAGES) when one loss
    times the number of masks would pass ``budget_s``. The model is left as it was."""
    import time

    import torch

    from .structured import cut_for

    todo = [(group, kept) for group in groups if group.name in scores and group.name in widths
            for kept in widths[group.name] if kept < group.width]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            base = mean_loss(model, images, labels, output)
            spent = time.perf_counter() - start
            if todo and spent * len(todo) > budget_s and len(images) > MIN_IMAGES:
                keep = max(MIN_IMAGES, int(len(images) * budget_s / (spent * len(todo))))
                images, labels = images[:keep], labels[:keep]
                base = mean_loss(model, images, labels, output)
            points: dict[str, dict[int, float]] = {}
            failed: dict[str, Any] = {}
            for group, kept in todo:
                if group.name in failed:
                    continue
                line = points.setdefault(group.name, {group.width: 0.0})
                try:
                    cut = cut_for(graph, group, torch.as_tensor(scores[group.name]), kept)
                    if cut is not None:
                        with masked(graph, graph.get_pruning_group(*cut)):
                            line[kept] = mean_loss(model, images, labels, output) - base
                except Exception as exc:  # noqa: BLE001 - a user's model torch-pruning cannot follow here
                    failed[group.name] = exc
    finally:
        model.train(training)
    curves = {name: regular(line) for name, line in points.items() if name not in failed}
    for name in failed:  # not measured, so not cut: the latency search leaves it whole rather than guess
        curves[name] = [(max(points[name]), 0.0), (0, UNMEASURED)]
    return curves


def unmeasured(curves: Mapping[str, Curve]) -> list[str]:
    """The groups ``measured_costs`` could not mask (the search leaves them whole)."""
    return [name for name, curve in curves.items() if curve and curve[-1][1] >= UNMEASURED]


def mean_loss(model: Any, images: Any, labels: Any, output: Any = 0, chunk: int = 64) -> float:
    import torch

    from ...outputs import select

    total = 0.0
    for start in range(0, len(images), chunk):
        logits = select(model(images[start:start + chunk]), output)
        total += float(torch.nn.functional.cross_entropy(logits, labels[start:start + chunk], reduction="sum"))
    return total / max(1, len(images))


@contextmanager
def masked(graph: Any, pruning: Any) -> Iterator[None]:
    """The channels a torch-pruning group would remove, zeroed where they are produced (every layer whose output
    channels the group cuts: weight rows, bias, a norm's running mean), restored on exit. A zero channel adds
    nothing to the layers it feeds, so the model computes what the pruned model would (a layer normalising over
    channels, such as LayerNorm, sees one difference: the zeros still count in its statistics)."""
    import torch

    saved = []
    try:
        for dep, idxs in pruning:
            module = dep.target.module
            if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(module, torch.nn.Module):
                continue
            if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
                continue  # its output channels are dim 1: left as is (an estimate, not a crash)
            index = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
            if not len(index):
                continue
            for name in ("weight", "bias", "running_mean"):
                tensor = getattr(module, name, None)
                if isinstance(tensor, torch.Tensor) and tensor.dim() and int(index.max()) < tensor.shape[0]:
                    saved.append((tensor, index, tensor.data[index].clone()))
                    tensor.data[index] = 0
        yield
    finally:
        for tensor, index, values in reversed(saved):
            tensor.data[index] = values
