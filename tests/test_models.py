"""Every zoo model: forward shape, BN folding is numerically exact, ONNX export matches torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.host.export import export_onnx, verify_onnx
from edgekit.host.fold import fold_batchnorm
from edgekit.host.models import create_model, list_models

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
    inputs = torch.randn(4, 3, 32, 32)
    folded, count = fold_batchnorm(model)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count == batchnorms and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(model(inputs), folded(inputs), rtol=1e-4, atol=1e-4)
        assert model(inputs).shape == (4, 10)


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
