"""Structured pruning: allocation maths, aligned widths on every zoo model, reload, odd topologies, guards."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgekit.host.errors import ConfigError
from edgekit.host.optimize.export.onnx_export import export_onnx, verify_onnx
from edgekit.host.optimize.fold.batchnorm import fold_batchnorm
from edgekit.host.optimize.prune.structured import (
    PruneSpec,
    aligned_width,
    build_graph,
    cap_widths,
    cost_weighted_ratios,
    kept_widths_uniform,
    misaligned,
    prune_model,
    widths,
)
from edgekit.host.train.checkpoint import load_model, save_checkpoint
from edgekit.host.train.models import create_model

ZOO = ["mobilenetv2", "nin", "resnet20", "resnet56", "vgg11_bn", "vgg16_bn"]
EXAMPLE = torch.zeros(1, 3, 32, 32)


def no_fit(model, step, loss_fn, after_backward):
    return 0, float("nan")


def prune(model, **spec):
    return prune_model(model, PruneSpec(**spec), EXAMPLE, lambda step: [], no_fit, lambda message: None)


def test_widths_round_to_the_nearest_multiple_not_down():
    assert aligned_width(43, 64, 8) == 40 and aligned_width(44, 64, 8) == 48  # nearest, ties up
    assert aligned_width(3, 64, 8) == 8  # never below one unit
    assert aligned_width(30, 6, 8) == 6  # narrower than a unit: left alone
    assert aligned_width(20, 64, 8, ch_groups=3) == 24  # multiple of lcm(8, 3)
    original = {"a": 64, "b": 96}
    half = {"a": 0.5, "b": 0.5}
    assert kept_widths_uniform(original, original, half, 1, 2, 8, {}) == {"a": 48, "b": 72}
    assert kept_widths_uniform(original, {"a": 48, "b": 72}, half, 2, 2, 8, {}) == {"a": 32, "b": 48}
    assert cap_widths({"a": 8, "b": 48}, original, 0.75, 8, {}) == {"a": 16, "b": 48}


def test_cost_weight_moves_the_cut_to_costly_layers_and_keeps_the_channel_count():
    original = {"early": 64, "middle": 128, "late": 256}
    costs = {"early": 9000.0, "middle": 2000.0, "late": 500.0}
    assert cost_weighted_ratios(original, costs, 0.5, 0.0, 0.9) == {n: 0.5 for n in original}
    ratios = cost_weighted_ratios(original, costs, 0.5, 0.3, 0.9)
    assert ratios["early"] > ratios["middle"] > ratios["late"]
    removed = sum(ratios[n] * w for n, w in original.items())
    assert removed == pytest.approx(0.5 * sum(original.values()), rel=1e-6)
    capped = cost_weighted_ratios(original, costs, 0.5, 2.0, 0.75)
    assert capped["early"] == 0.75 and max(capped.values()) <= 0.75
    assert sum(capped[n] * w for n, w in original.items()) == pytest.approx(0.5 * 448, rel=1e-6)


def test_cost_weighted_pruning_of_mobilenetv2_cuts_more_macs_than_uniform():
    uniform, weighted = create_model("mobilenetv2", width=1.0).eval(), create_model("mobilenetv2", width=1.0).eval()
    before = widths(weighted)
    prune(uniform, ratio=0.5, round_to=16)
    prune(weighted, ratio=0.5, round_to=16, cost_weight=0.2)
    channels = [sum(w for n, w in widths(m).items() if n != "classifier") for m in (uniform, weighted)]
    assert abs(channels[0] - channels[1]) <= 0.02 * channels[0]  # still half the channels
    macs = [tp.utils.count_ops_and_params(m, EXAMPLE)[0] for m in (uniform, weighted)]
    assert macs[1] < 0.8 * macs[0]
    assert misaligned(before, widths(weighted), 16) == []


@pytest.mark.parametrize("arch", ZOO)
def test_every_zoo_model_prunes_to_aligned_widths_and_exports(tmp_path, arch):
    model = create_model(arch, width=1.0).eval()
    before = widths(model)
    prune(model, ratio=0.5)
    after = widths(model)
    changed = {name: w for name, w in after.items() if w != before[name]}
    assert changed, "nothing was pruned"
    assert all(w % 8 == 0 for w in changed.values()), changed
    assert all(abs(w - before[name] / 2) <= 4 for name, w in changed.items())  # 50%, to the nearest 8
    folded, _ = fold_batchnorm(model)
    export_onnx(folded, tmp_path / "m.onnx", [3, 32, 32])
    inputs = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert verify_onnx(folded, tmp_path / "m.onnx", inputs) < 1e-3


def test_pruned_checkpoint_reloads_weights_only_with_identical_outputs(tmp_path):
    model = create_model("resnet20", width=1.0).eval()
    steps = prune(model, ratio=0.5, steps=2)
    save_checkpoint(tmp_path / "p.pt", model, {"pruning_history": steps[-1].history, "input_shape": [3, 32, 32]})
    reloaded, meta = load_model(tmp_path / "p.pt", "resnet20", 10, 1.0, 3)
    inputs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(inputs), reloaded(inputs))
    assert widths(reloaded) == widths(model) and len(steps) == 2


class Branchy(nn.Module):
    """Concatenation, a grouped conv (groups=4) and a depthwise conv in one network."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=4), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.grouped(torch.cat([self.left(x), self.right(x)], dim=1))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("seed", range(4))
def test_concat_depthwise_and_grouped_convs_prune_export_and_validate(tmp_path, seed):
    torch.manual_seed(seed)  # different weights, different channels chosen
    model = Branchy().eval()
    prune(model, ratio=0.5)
    grouped = model.grouped[0]
    assert grouped.groups == 4 and grouped.in_channels % 4 == 0 and grouped.out_channels % 8 == 0
    depthwise = model.right[3]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == model.right[0].out_channels
    assert grouped.in_channels == model.left[0].out_channels + model.right[3].out_channels
    # the concat branches feed only part of the grouped conv each: kept whole, so its groups stay balanced
    assert model.left[0].out_channels == 32 and model.right[3].out_channels == 32
    assert model.stem[0].out_channels == 16 and grouped.out_channels == 32
    assert sum(p.numel() for p in model.parameters()) < 0.6 * sum(p.numel() for p in Branchy().parameters())
    folded, _ = fold_batchnorm(model)
    export_onnx(folded, tmp_path / "b.onnx", [3, 32, 32])
    inputs = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert verify_onnx(folded, tmp_path / "b.onnx", inputs) < 1e-3


@pytest.mark.parametrize("method", ["bn_scale", "taylor", "magnitude"])
def test_each_method_prunes_with_its_own_importance(digits_dir, method):
    from edgekit.host.train.data import batches, load_cifar

    data = load_cifar(digits_dir)
    model = create_model("vgg11_bn", width=0.5)
    trained_epochs = []

    def fit(net, step, loss_fn, after_backward):
        if step == 0:  # bn_scale's sparsity training hook must push gammas towards zero
            gammas = torch.cat([m.weight.detach().abs() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
            for inputs, labels in batches(data.train, 64, [0.3] * 3, [0.4] * 3):
                net.zero_grad()
                nn.functional.cross_entropy(net(inputs), labels).backward()
                after_backward()
                torch.optim.SGD(net.parameters(), lr=0.1).step()
                break
            after = torch.cat([m.weight.detach().abs() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
            assert after.shape == gammas.shape
        trained_epochs.append(step)
        return 0, 0.0

    spec = PruneSpec(method=method, ratio=0.5, sparsity_epochs=1)
    prune_model(model, spec, EXAMPLE, lambda step: batches(data.train, 32, [0.3] * 3, [0.4] * 3), fit,
                lambda m: None)
    assert trained_epochs == ([0, 1] if method == "bn_scale" else [1])
    assert all(w % 8 == 0 for name, w in widths(model).items() if name != "classifier")


def test_global_scope_respects_the_layer_cap():
    model = create_model("resnet20", width=2.0).eval()
    before = widths(model)
    prune(model, ratio=0.6, scope="global", max_layer_ratio=0.5)
    after = widths(model)
    assert all(after[name] >= before[name] * 0.5 for name in after)
    assert sum(after.values()) < sum(before.values())


def test_frozen_parameters_are_refused():
    model = create_model("resnet20", width=0.5)
    model.conv1.weight.requires_grad_(False)
    with pytest.raises(ConfigError, match="frozen parameter.*conv1.weight"):
        prune(model, ratio=0.5)


def test_an_untraceable_model_is_a_clear_error():
    class NeedsTwo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean(dim=(2, 3)).view(2, -1))  # only works for batch 2

    with pytest.raises(ConfigError, match="torch-pruning cannot trace this model"):
        build_graph(NeedsTwo(), EXAMPLE)


def test_a_ratio_that_empties_layers_is_refused_in_config(trained_project, tmp_path):
    from edgekit.host.config import load_config

    root = tmp_path / "p"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = root / "deploy.toml"
    config.write_text(config.read_text() + "\n[prune]\nenabled = true\nratio = 1.0\n")
    with pytest.raises(ConfigError, match="prune.ratio: Input should be less than 1"):
        load_config(config)


def test_optimize_prunes_fine_tunes_and_reports_each_step(trained_project, tmp_path):
    from edgekit.host.config import load_config
    from edgekit.host.optimize import optimize

    root = tmp_path / "p"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = root / "deploy.toml"
    config.write_text(config.read_text().replace("width = 0.25", "width = 1.0")
                      + "\n[prune]\nenabled = true\nsteps = 2\nfinetune_epochs = 1\ndistill = true\n"
                      "allow_accuracy_drop = true\n"
                      + "\n[quantize]\nenabled = false\n")
    (root / "runs" / "tiny.pt").unlink()
    model = create_model("resnet20", width=1.0)
    save_checkpoint(root / "runs" / "tiny.pt", model, {"arch": "resnet20"})
    result = optimize(load_config(config), say=lambda m: None)
    names = [s["stage"] for s in result.stages]
    assert names == ["trained (FP32 baseline)", "pruned step 1/2", "pruned 50% + fine-tuned",
                     "BatchNorm folded (torch)", "ONNX FP32 (BN folded)"]
    assert result.stages[2]["macs"] < 0.35 * result.stages[0]["macs"]
    assert all(set(s["latency_ms"]) == {"1", "32"} for s in result.stages if "onnx_bytes" in s)  # JSON keys
    reloaded, meta = load_model(result.directories["prune"] / "pruned.pt", "resnet20", 10, 1.0, 3)
    assert meta["pruning_history"] and widths(reloaded)["layers.0.conv1"] == 8


def test_fine_tuning_stops_once_recovered_not_at_the_budget_edge():
    from edgekit.host.optimize.prune.stage import recovered

    assert not recovered(0.985, 0.99)  # within a 1-point budget, yet the budget must still cover INT8 and noise
    assert recovered(0.99, 0.99) and recovered(1.0, 0.99)
