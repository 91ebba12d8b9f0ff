"""Network in Network (Lin et al. 2014) with BatchNorm, the CIFAR model micronet quantises and prunes.

The classifier is a 1x1 convolution to the class count followed by global average pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register, scaled


def _block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class NIN(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c192, c160, c96 = scaled(192, width), scaled(160, width), scaled(96, width)
        self.features = nn.Sequential(
            *_block(in_channels, c192, 5), *_block(c192, c160, 1), *_block(c160, c96, 1),
            nn.MaxPool2d(3, 2, 1),
            *_block(c96, c192, 5), *_block(c192, c192, 1), *_block(c192, c192, 1),
            nn.AvgPool2d(3, 2, 1),
            *_block(c192, c192, 3), *_block(c192, c192, 1),
        )
        self.classifier = nn.Conv2d(c192, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.classifier(self.features(x))), 1)


@register("nin")
def nin(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return NIN(num_classes, width, in_channels)
