"""A zoo of user-style models edgekit has never seen, written the way people write them.

Each factory takes ``num_classes``, ``width`` and ``in_channels`` like the built-in zoo, so a project can
name it as ``tests.user_models:<factory>`` (or ``user_models:<factory>`` with this folder on PYTHONPATH).
Widths are tiny so the end-to-end tests stay fast; ``benchmarks/user_models.py`` pushes them wider.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _c(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Head(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- channel shuffle (ShuffleNet) -----------------------------------------------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ShuffleBlock(nn.Module):
    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.reduce = conv_bn(channels, channels, groups=groups, kernel=1)
        self.depthwise = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                                       nn.BatchNorm2d(channels))
        self.expand = nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups, bias=False),
                                    nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.reduce(x), self.groups)
        return F.relu(x + self.expand(self.depthwise(out)))


def shufflenet(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    c = _c(16, width) // 2 * 2
    return nn.Sequential(conv_bn(in_channels, c), ShuffleBlock(c), conv_bn(c, 2 * c, stride=2),
                         ShuffleBlock(2 * c), Head(2 * c, num_classes))


# -- squeeze-excitation ---------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, max(4, channels // reduction), 1)
        self.up = nn.Conv2d(max(4, channels // reduction), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


def senet(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    c = _c(16, width)
    return nn.Sequential(conv_bn(in_channels, c), SqueezeExcite(c), conv_bn(c, 2 * c, stride=2),
                         SqueezeExcite(2 * c), conv_bn(2 * c, 2 * c, stride=2), Head(2 * c, num_classes))


# -- dense concatenation (DenseNet) ---------------------------------------------------------------
class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-Conv1x1-BN-ReLU-Conv3x3: the BNs follow a concat, not a conv."""

    def __init__(self, cin: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(features)))
        return torch.cat([features, self.conv2(F.relu(self.norm2(out)))], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


def imagenet_stem(cin: int, cout: int) -> nn.Module:
    """torchvision's and timm's DenseNet stem: 7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool."""
    return nn.Sequential(nn.Conv2d(cin, cout, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))


class DenseNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], growth: int, stem: int, num_classes: int, in_channels: int,
                 imagenet: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [imagenet_stem(in_channels, stem) if imagenet
                                   else nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)]
        channels = stem
        for index, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                layers.append(Transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def densenet(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    growth = _c(8, width)
    return DenseNet((2, 2), growth, 2 * growth, num_classes, in_channels)


def densenet121(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """DenseNet-121 as timm and torchvision build it (6, 12, 24, 16 layers, growth 32, bottleneck 4,
    ImageNet stem): what a user brings. At 32×32 the stem leaves 8×8 maps, 58.5 M MACs."""
    growth = _c(32, width)
    return DenseNet((6, 12, 24, 16), growth, 2 * growth, num_classes, in_channels, imagenet=True)


def densenet121_cifar(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """The same layers behind a CIFAR stem (3×3, stride 1): full 32×32 maps in block 1, 899 M MACs."""
    growth = _c(32, width)
    return DenseNet((6, 12, 24, 16), growth, 2 * growth, num_classes, in_channels)


# -- ConvTranspose with a skip connection (encoder-decoder) ---------------------------------------
class UpSkip(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c = _c(16, width)
        self.enc1 = conv_bn(in_channels, c)
        self.enc2 = conv_bn(c, 2 * c, stride=2)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2, bias=False)
        self.up_bn = nn.BatchNorm2d(c)
        self.fuse = conv_bn(c, 2 * c, stride=2)
        self.head = Head(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(x)
        x = F.relu(self.up_bn(self.up(self.enc2(skip))) + skip)
        return self.head(self.fuse(x))


def upskip(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return UpSkip(num_classes, width, in_channels)


# -- two outputs: an embedding first, the logits second -------------------------------------------
class TwoOutputs(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c = _c(16, width)
        self.features = nn.Sequential(conv_bn(in_channels, c), conv_bn(c, 2 * c, stride=2))
        self.embed = nn.Linear(2 * c, 24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))
        return embedding, self.fc(F.relu(embedding))


def two_outputs(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return TwoOutputs(num_classes, width, in_channels)


# -- an optional second input, and a required one -------------------------------------------------
class OptionalMask(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c = _c(16, width)
        self.body = nn.Sequential(conv_bn(in_channels, c), conv_bn(c, 2 * c, stride=2))
        self.head = Head(2 * c, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            x = x * mask
        return self.head(self.body(x))


def optional_input(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return OptionalMask(num_classes, width, in_channels)


class TwoInputs(OptionalMask):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(self.body(x * mask))


def two_inputs(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return TwoInputs(num_classes, width, in_channels)


# -- the classifier registered before the features ------------------------------------------------
class ClassifierFirst(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c = _c(16, width)
        self.fc = nn.Linear(2 * c, num_classes)
        self.stem = conv_bn(in_channels, c)
        self.stage = conv_bn(c, 2 * c, stride=2)
        self.extra = nn.Conv2d(2 * c, 2 * c, 3, padding=1)  # the last Conv/Linear registered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.extra(self.stage(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def classifier_first(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return ClassifierFirst(num_classes, width, in_channels)


# -- a hard-coded view ----------------------------------------------------------------------------
class HardView(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        self.c = _c(16, width)
        self.body = nn.Sequential(conv_bn(in_channels, self.c), nn.MaxPool2d(2), conv_bn(self.c, self.c),
                                  nn.MaxPool2d(2), conv_bn(self.c, self.c), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(self.c * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).view(-1, self.c * 16))


def hard_view(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return HardView(num_classes, width, in_channels)


# -- an `if` on a shape ---------------------------------------------------------------------------
class ShapeIf(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c = _c(16, width)
        self.stem = conv_bn(in_channels, c)
        self.stage = conv_bn(c, 2 * c, stride=2)
        self.head = Head(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.shape[-1] > 16:
            x = F.max_pool2d(x, 2)
        return self.head(self.stage(x))


def shape_if(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return ShapeIf(num_classes, width, in_channels)


# -- timm-style fused BatchNorm + activation ------------------------------------------------------
class BatchNormAct2d(nn.BatchNorm2d):
    """Like timm's: a BatchNorm2d subclass that applies its activation in ``forward`` (functionally)."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum or 0.0, self.eps)
        return self.act(x)


class FusedBNAct(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c = _c(16, width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn2 = BatchNormAct2d(2 * c)
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False)
        self.bn3 = BatchNormAct2d(2 * c)
        self.head = Head(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.bn2(self.conv2(x))
        return self.head(self.bn3(self.conv3(x)) + x)


def fused_bn_act(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return FusedBNAct(num_classes, width, in_channels)


# -- self-attention over positions ----------------------------------------------------------------
class SpatialAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, 3, channels, height * width).unbind(1)
        attention = torch.softmax(q.transpose(1, 2) @ k / channels ** 0.5, dim=-1)
        out = (v @ attention.transpose(1, 2)).reshape(batch, channels, height, width)
        return x + self.proj(out)


def attention(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    c = _c(16, width)
    return nn.Sequential(conv_bn(in_channels, c), conv_bn(c, 2 * c, stride=2), SpatialAttention(2 * c),
                         conv_bn(2 * c, 2 * c, stride=2), Head(2 * c, num_classes))


# -- layer scale (ConvNeXt, CaiT): a bare nn.Parameter scales each channel --------------------------
class LayerScaleBlock(nn.Module):
    """ConvNeXt-style: depthwise conv, inverted bottleneck, then ``x * gamma`` with ``gamma`` a bare
    per-channel parameter (no module of its own: torch-pruning calls it "unwrapped")."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.BatchNorm2d(channels)
        self.expand = nn.Conv2d(channels, 4 * channels, 1)
        self.reduce = nn.Conv2d(4 * channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.reduce(F.gelu(self.expand(self.norm(self.dw(x)))))
        return x + out * self.gamma.reshape(1, -1, 1, 1)


def layer_scale(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    c = _c(16, width)
    return nn.Sequential(conv_bn(in_channels, c, stride=2), LayerScaleBlock(c), LayerScaleBlock(c),
                         Head(c, num_classes))


# -- separable linear attention (MobileViTv2): q/k/v split to sizes fixed in the code ----------------
class LinearAttention(nn.Module):
    """One conv makes a 1-channel query plus d-channel key and value, split with sizes from ``__init__``:
    after pruning that conv the literal sizes no longer add up."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.qkv = nn.Conv2d(channels, 1 + 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).split([1, self.channels, self.channels], dim=1)
        scores = torch.softmax(query.flatten(2), dim=-1).view_as(query)
        context = (key * scores).sum(dim=(2, 3), keepdim=True)
        return x + self.proj(F.relu(value) * context)


def linear_attention(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    c = _c(16, width)
    return nn.Sequential(conv_bn(in_channels, c), conv_bn(c, 2 * c, stride=2), LinearAttention(2 * c),
                         conv_bn(2 * c, 2 * c, stride=2), Head(2 * c, num_classes))


# -- ghost modules (GhostNet): half the channels from a cheap op, concatenated and sliced to width --
class GhostModule(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.out = cout
        half = (cout + 1) // 2
        act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.primary = nn.Sequential(nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), act)
        self.cheap = nn.Sequential(nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        return torch.cat([primary, self.cheap(primary)], 1)[:, :self.out]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.ghost1, self.ghost2 = GhostModule(cin, mid), GhostModule(mid, cout, relu=False)
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


def ghost(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    c = _c(16, width)
    return nn.Sequential(conv_bn(in_channels, c, stride=2), GhostBottleneck(c, 3 * c, 2 * c),
                         GhostBottleneck(2 * c, 6 * c, 2 * c), Head(2 * c, num_classes))


ZOO = ["shufflenet", "senet", "densenet", "upskip", "two_outputs", "optional_input", "classifier_first",
       "hard_view", "shape_if", "fused_bn_act", "attention", "layer_scale",
       "linear_attention", "ghost"]
