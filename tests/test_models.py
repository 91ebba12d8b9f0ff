"""Every zoo model: forward shape, BN folding is numerically exact, ONNX export matches torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.host.optimize.export.onnx_export import export_onnx, verify_onnx
from edgekit.host.optimize.fold.batchnorm import fold_batchnorm
from edgekit.host.train.models import create_model, list_models

ZOO = ["mobilenetv2", "nin", "resnet20", "resnet56", "vgg11_bn", "vgg16_bn"]


def randomize_bn(model: nn.Module) -> nn.Module:
    """Trained-looking BN statistics, so folding is tested on more than the identity."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def test_the_zoo_lists_every_model():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("arch", ZOO)
def test_folding_removes_every_batchnorm_and_keeps_outputs(arch):
    model = randomize_bn(create_model(arch, num_classes=10, width=0.5))
    inputs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    folded, count = fold_batchnorm(model)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count == batchnorms and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        expected = model(inputs)
        # float32 rounding through 56 random-BN layers grows with the activations (logits ~1e4 here): the
        # tolerance is relative to the output's scale, far below what a wrongly folded layer changes
        scale = float(expected.abs().max())
        assert torch.allclose(expected, folded(inputs), rtol=1e-4, atol=1e-5 * scale)
        assert expected.shape == (4, 10)


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2", "nin"])
def test_export_has_dynamic_batch_and_matches_torch(tmp_path, arch):
    import onnx

    model, _ = fold_batchnorm(randomize_bn(create_model(arch, width=0.25)))
    path = tmp_path / "m.onnx"
    export_onnx(model, path, [3, 32, 32])
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert verify_onnx(model, path, np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)) < 1e-3


def test_width_multiplier_scales_parameters():
    small = sum(p.numel() for p in create_model("resnet20", width=0.5).parameters())
    large = sum(p.numel() for p in create_model("resnet20", width=2.0).parameters())
    assert large > 10 * small


def test_user_models_come_from_module_function(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=10, width=1.0, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("mynet:build", num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    from edgekit.host.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot import"):
        create_model("mynet:missing")


def test_checkpoints_load_weights_only_and_refuse_pickled_objects(tmp_path):
    from edgekit.host.errors import ConfigError
    from edgekit.host.train.checkpoint import load_model, save_checkpoint

    model = create_model("resnet20", width=0.25).eval()
    save_checkpoint(tmp_path / "ok.pt", model, {"arch": "resnet20"})
    loaded, meta = load_model(tmp_path / "ok.pt", "resnet20", 10, 0.25, 3)
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(inputs), loaded(inputs)) and meta == {"arch": "resnet20"}
    torch.save({"state_dict": model.state_dict(), "module": model}, tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="not a loadable weights-only checkpoint"):
        load_model(tmp_path / "pickled.pt", "resnet20", 10, 0.25, 3)
    with pytest.raises(ConfigError, match="does not match model resnet20"):
        load_model(tmp_path / "ok.pt", "resnet20", 10, 0.5, 3)
