"""Users' own models (tests/user_models.py): output layers from the graph, pruning that protects what
torch-pruning cannot follow, BN folding for any model, multi-output export and training, host GPU
selection, and one line for what edgekit does not support."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekit.host.errors import ConfigError
from edgekit.host.optimize.export.onnx_export import export_onnx, onnx_predict, verify_onnx
from edgekit.host.optimize.fold.batchnorm import fold_in_onnx, fold_in_torch
from edgekit.host.optimize.fold.onnx_graph import count_batchnorm
from edgekit.host.optimize.prune.structured import PruneSpec, prune_model
from edgekit.host.outputs import check_classifier, check_single_input, output_layers
from edgekit.host.train.accelerator import resolve

from . import user_models
from .test_models import randomize_bn

EXAMPLE = torch.zeros(1, 3, 32, 32)
OUTPUT = {"two_outputs": 1}
# What torch-pruning cannot follow, by model: the convs behind a channel shuffle, the layer before a view
# to hard-coded sizes, the q/k/v projection of attention (and the projection after its reshape).
UNFOLLOWABLE = {"shufflenet": ["1.depthwise.0", "3.depthwise.0"], "hard_view": ["body.4.0"],
                "attention": ["2.proj", "2.qkv"], "linear_attention": ["2.qkv"],
                "ghost": ["1.shortcut.2"]}


def build(name: str) -> nn.Module:
    return randomize_bn(getattr(user_models, name)())


def prune(model: nn.Module, name: str, messages: list[str] | None = None, **spec) -> list:
    batch = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    say = messages.append if messages is not None else (lambda message: None)
    return prune_model(model, PruneSpec(ratio=0.5, round_to=4, output=OUTPUT.get(name, 0), num_classes=10, **spec),
                       EXAMPLE, lambda step: [], lambda *args: (0, float("nan")), say, batch=batch)


def test_output_layers_come_from_the_graph_not_registration_order():
    assert output_layers(build("classifier_first"), EXAMPLE) == ["fc"]  # defined first, runs last
    assert sorted(output_layers(build("two_outputs"), EXAMPLE)) == ["embed", "fc"]
    assert output_layers(build("densenet"), EXAMPLE) == ["classifier"]


@pytest.mark.parametrize("name", user_models.ZOO)
def test_every_zoo_model_prunes_keeps_its_outputs_and_exports(tmp_path, name):
    model = build(name)
    reference = model(torch.zeros(2, 3, 32, 32))
    before = sum(p.numel() for p in model.parameters())
    messages: list[str] = []
    steps = prune(model, name, messages)
    after = model.eval()(torch.zeros(2, 3, 32, 32))
    shapes = [t.shape for t in (after if isinstance(after, tuple) else (after,))]
    assert shapes == [t.shape for t in (reference if isinstance(reference, tuple) else (reference,))]
    assert sum(p.numel() for p in model.parameters()) < before
    folded, report = fold_in_torch(model, torch.randn(4, 3, 32, 32), OUTPUT.get(name, 0))
    export_onnx(folded, tmp_path / "m.onnx", [3, 32, 32], output=OUTPUT.get(name, 0))
    fold_in_onnx(tmp_path / "m.onnx", report)
    inputs = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert verify_onnx(model, tmp_path / "m.onnx", inputs, output=OUTPUT.get(name, 0)) < 1e-3
    protected = steps[-1].protected
    assert sorted(protected) == sorted(UNFOLLOWABLE.get(name, [])), protected
    if protected:
        assert any("torch-pruning cannot follow" in m for m in messages)
    if name == "hard_view":
        assert "mat1 and mat2" in protected["body.4.0"]  # the forward pass broke
    if name == "shufflenet":
        assert all("no longer line up" in reason for reason in protected.values())  # ran, but wrongly
    if name == "attention":
        assert "Bmm" in protected["2.qkv"]  # found statically: torch-pruning's mapping never ends there
    if name == "ghost":  # torch-pruning cut more than asked (a concat with a depthwise conv of itself)
        assert "not the 16 asked for" in protected["1.shortcut.2"]
    if name == "linear_attention":  # found statically: torch-pruning takes ~28 s per mapping of a 257-channel
        assert "split_with_sizes" in protected["2.qkv"]  # one, and the probe's bisection maps it dozens of times


def test_torch_pruning_warnings_do_not_reach_the_user(recwarn):
    """A bare per-channel parameter (ConvNeXt's layer scale) made torch-pruning warn "Unwrapped parameters
    detected" — six lines per graph build, a dozen builds per push on convnext_atto. The probe checks what
    torch-pruning does with it, so the warning says nothing the user can act on."""
    model = build("layer_scale")
    prune(model, "layer_scale")
    assert not [w for w in recwarn if "nwrapped" in str(w.message) or "Unknown operation" in str(w.message)]
    assert model[1].gamma.shape[0] == model[1].reduce.out_channels < 16  # pruned together, and consistently


def test_a_protected_layer_stays_whole_and_an_unknown_one_is_one_line():
    model = build("senet")
    width = model[2][0].out_channels
    prune(model, "senet", protect=("2.0",))
    assert model[2][0].out_channels == width
    with pytest.raises(ConfigError, match="prune.protect: the model has no layer 'nope'"):
        prune(build("senet"), "senet", protect=("nope",))


def test_group_norm_is_named_as_the_reason_pruning_stops():
    """Removing channels under a GroupNorm changes the other channels' statistics: the probe must say so,
    not blame torch-pruning's channel mapping, and the one line must carry the reason."""
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU())

    model = nn.Sequential(block(3, 16), block(16, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(ConfigError, match="GroupNorm normalises across channels.*prune.enabled = false") as caught:
        prune(model, "groupnorm")
    assert "\n" not in str(caught.value)


def test_the_classifier_output_must_have_num_classes_and_the_message_says_which_does():
    model = build("two_outputs")
    with pytest.raises(ConfigError, match=r"model output 0 has shape \[2, 24\] .* set model.output = 1"):
        check_classifier(model(torch.zeros(2, 3, 32, 32)), 0, 10)
    check_classifier(model(torch.zeros(2, 3, 32, 32)), 1, 10)
    with pytest.raises(ConfigError, match="model output 0 has shape"):
        prune(build("two_outputs"), "senet")  # output 0 selected: refused before anything is pruned


def test_two_outputs_export_the_classifier_first_and_the_others_too(tmp_path):
    model = build("two_outputs")
    names = export_onnx(model, tmp_path / "m.onnx", [3, 32, 32], output=1)
    assert names == ["logits", "output_0"]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [o.name for o in graph.output] == names
    assert onnx_predict(tmp_path / "m.onnx", np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 10)


def test_a_second_required_input_is_one_line_an_optional_one_is_fine():
    check_single_input(build("optional_input"))
    with pytest.raises(ConfigError, match="forward needs more than the image: mask; .*give the extra input"):
        check_single_input(build("two_inputs"))


@pytest.mark.parametrize("name, torch_folded, onnx_folded, remaining", [
    ("shape_if", 0, 2, 0),  # fx: TraceError on the `if`
    ("optional_input", 0, 2, 0),  # fx traces `mask` as a required input
    ("fused_bn_act", 0, 3, 0),  # BatchNormAct2d calls F.batch_norm inside its forward
    ("densenet", 4, 0, 6),  # pre-activation BNs follow a concat: they stay
    ("upskip", 4, 0, 0),
])
def test_folding_counts_truly_for_any_model(tmp_path, name, torch_folded, onnx_folded, remaining):
    model = build(name)
    sample = torch.randn(4, 3, 32, 32)
    folded, report = fold_in_torch(model, sample)
    export_onnx(folded, tmp_path / "m.onnx", [3, 32, 32])
    fold_in_onnx(tmp_path / "m.onnx", report)
    assert (report.torch_folded, report.onnx_folded, report.remaining) == (torch_folded, onnx_folded, remaining)
    assert count_batchnorm(tmp_path / "m.onnx") == remaining
    assert report.folded + report.remaining == report.batchnorms
    assert ("torch.fx cannot trace" in report.message()) == (name in ("shape_if", "optional_input"))
    assert verify_onnx(model, tmp_path / "m.onnx", sample.numpy()) < 1e-3


def test_without_folding_the_export_keeps_every_batchnorm(tmp_path):
    model = build("senet")
    export_onnx(model, tmp_path / "m.onnx", [3, 32, 32])
    assert count_batchnorm(tmp_path / "m.onnx") == 3  # the exporter's own Conv+BN peephole is off


def test_onnx_folding_is_exact_for_grouped_conv_transpose_and_linear_batchnorm(tmp_path):
    model = randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 12, 2, stride=2, groups=4), nn.BatchNorm2d(12),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 10)))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    export_onnx(model.eval(), tmp_path / "m.onnx", [3, 32, 32])
    report = fold_in_onnx(tmp_path / "m.onnx", fold_in_torch(nn.Identity(), torch.zeros(1))[1])
    assert (report.onnx_folded, report.remaining) == (2, 0)
    inputs = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert verify_onnx(model, tmp_path / "m.onnx", inputs) < 1e-4


def test_training_uses_the_classifier_output_and_mixed_precision_runs(digits_dir):
    from edgekit.host.train.data import channel_stats, load_dataset
    from edgekit.host.train.loop import top1, train

    data = load_dataset("cifar", digits_dir, (32, 32))
    mean, std = channel_stats(data.train)
    model = user_models.two_outputs()
    small = type(data.train)(data.train.images[:256], data.train.labels[:256])
    train(model, small, mean, std, epochs=1, batch_size=64, lr=0.05, output=1, amp=True, device=resolve("auto"))
    assert 0.0 <= top1(model, data.test, mean, std, output=1) <= 1.0


def test_the_host_device_is_auto_and_a_missing_gpu_is_one_line():
    assert resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device; use \"auto\""):
            resolve("cuda")

