"""The latency search's accuracy costs: a masked group costs what pruning it does, measured on real models
without changing them, and the curves are regular enough for a greedy search (no free cuts past a break-down)."""

from __future__ import annotations

import pytest
import torch

from edgekit.host.optimize.prune.sensitivity import cost_at, magnitude_costs, masked, mean_loss, measured_costs, regular
from edgekit.host.optimize.prune.structured import (
    build_graph,
    channel_scores,
    cut_for,
    importance,
    prune_copy,
    prune_groups,
)
from edgekit.host.outputs import output_layers
from edgekit.host.train.models.mobilenetv2 import mobilenetv2
from edgekit.host.train.models.resnet import resnet20


def settled(model: torch.nn.Module) -> torch.nn.Module:
    """A model whose BatchNorm layers have non-trivial statistics, as a trained one has (biases, means)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def graph_of(factory=resnet20) -> tuple:
    """A settled model at half width, its dependency graph, the groups that may be cut (the classifier's outputs
    are never cut) and their magnitude scores."""
    torch.manual_seed(0)
    model = settled(factory(num_classes=10, width=0.5))
    example = torch.zeros(1, 3, 32, 32)
    graph = build_graph(model, example)
    protect = output_layers(model, example)
    groups = prune_groups(graph, model, protect)
    scores = {g.name: channel_scores(importance("magnitude", 2), g) for g in groups}
    return model, example, graph, protect, groups, scores


@pytest.mark.parametrize("factory", [resnet20, mobilenetv2], ids=["resnet20", "mobilenetv2"])
def test_masking_a_group_computes_what_pruning_it_computes(factory):
    """Residual streams (coupled across blocks and shortcuts), inner convs and depthwise groups: the masked model's
    loss is the pruned model's, so the cost the search reads is the cut it makes."""
    model, example, graph, protect, groups, scores = graph_of(factory)
    images, labels = torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    checked = 0
    for group in groups[:: max(1, len(groups) // 5)]:
        kept = max(group.ch_groups, group.width // 2 // group.ch_groups * group.ch_groups)
        cut = cut_for(graph, group, scores[group.name], kept)
        if cut is None:
            continue
        with torch.no_grad(), masked(graph, graph.get_pruning_group(*cut)):
            masked_loss = mean_loss(model, images, labels)
        pruned = prune_copy(model, example, protect, {group.name: kept}, scores)
        with torch.no_grad():
            assert masked_loss == pytest.approx(mean_loss(pruned, images, labels), rel=1e-4, abs=1e-5), group.name
        checked += 1
    assert checked >= 3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # restored on exit


def test_measured_costs_rise_as_groups_narrow_and_leave_the_model_as_it_was():
    model, _, graph, _, groups, scores = graph_of()
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    widths = {g.name: [g.width, g.width // 2, g.width // 4] for g in groups}
    curves = measured_costs(model, graph, groups, scores, widths, images, labels)
    assert set(curves) == {g.name for g in groups}
    for name, curve in curves.items():
        assert [w for w, _ in curve] == sorted({*widths[name]}, reverse=True) and curve[0][1] == 0.0
        assert all(b[1] >= a[1] for a, b in zip(curve, curve[1:]))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_curves_are_never_negative_and_never_cheaper_per_channel_further_down():
    # noise made the first cut look like a gain; the loss saturated after the model broke down at 32
    curve = regular({64: 0.0, 48: -0.2, 32: 4.0, 16: 4.1, 8: 4.1})
    assert curve[0] == (64, 0.0) and curve[1] == (48, 0.0)
    assert curve[2][1] == pytest.approx(4.0)
    assert curve[3][1] == pytest.approx(8.0) and curve[4][1] == pytest.approx(10.0)  # 0.25 a channel, held on
    assert cost_at(curve, 64, 40) == pytest.approx(2.0) and cost_at(curve, 64, 4) == pytest.approx(10.0)
    assert cost_at(None, 64, 40) == 24.0  # no curve: channels removed


def test_scores_become_curves_of_the_channels_removed_lowest_first():
    from edgekit.host.optimize.prune.latency import group_space

    spaces = {"g": group_space("g", 32, 8, 1, 0.75)}
    curves = magnitude_costs({"g": [float(i) for i in range(32)]}, spaces)
    assert curves["g"] == [(w, float(sum(range(32 - w)))) for w in (32, 24, 16, 8)]


def test_a_group_that_cannot_be_masked_is_left_whole_by_the_search():
    """A user's model torch-pruning cannot follow in one group: the others are still measured, and that group
    gets a cost no saving outweighs (named by ``unmeasured``), so the latency search does not cut it blind."""
    from edgekit.host.optimize.prune.latency import LatencyModel, search_widths
    from edgekit.host.optimize.prune.sensitivity import unmeasured

    from .test_latency_prune import synthetic_table, two_groups

    model, _, graph, _, groups, scores = graph_of()
    broken = groups[0]
    follow = graph.get_pruning_group

    def refuse(module, *args, **kwargs):
        if module is broken.root:
            raise IndexError("index mapping failed")
        return follow(module, *args, **kwargs)

    graph.get_pruning_group = refuse
    curves = measured_costs(model, graph, groups, scores, {g.name: [g.width // 2] for g in groups},
                            torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert unmeasured(curves) == [broken.name] and len(curves) == len(groups)

    layers, spaces = two_groups()
    latency = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    costs = {"a": curves[broken.name], "b": [(32, 0.0), (8, 50.0)]}  # b is dear, a unmeasured: b is cut
    found = search_widths(latency, costs, latency.predict(latency.full()) * 0.9)
    assert found.widths["a"] == 32 and found.widths["b"] < 32
