"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: the stem and the second stage keep stride 1."""

from __future__ import annotations

import torch
from torch import nn

from . import register

# expansion, output channels, blocks, stride (CIFAR variant)
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of 8 (never down by more than 10%), as the paper's width multiplier does."""
    value = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return value + divisor if value < 0.9 * channels else value


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        cin = divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3, 1)]
        for expansion, channels, blocks, stride in _STAGES:
            cout = divisible(channels * width)
            for index in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expansion))
                cin = cout
        last = divisible(1280 * max(1.0, width))
        layers.append(conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return CifarMobileNetV2(num_classes, width, in_channels)
