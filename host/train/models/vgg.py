"""VGG-11/16 with BatchNorm (Simonyan & Zisserman 2015) as used on CIFAR: one linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from . import register, scaled

_CONFIGS = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, config: list, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = scaled(item, width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("vgg11_bn")
def vgg11_bn(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return CifarVGG(_CONFIGS["vgg11_bn"], num_classes, width, in_channels)


@register("vgg16_bn")
def vgg16_bn(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return CifarVGG(_CONFIGS["vgg16_bn"], num_classes, width, in_channels)
