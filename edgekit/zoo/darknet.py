"""DarkNet-19 (YOLO9000, Redmon & Farhadi, 2017) and DarkNet-53 (YOLOv3, Redmon & Farhadi, 2018).

Papers: https://arxiv.org/abs/1612.08242 (Table 6, Darknet-19) and
https://arxiv.org/abs/1804.02767 (Table 1, Darknet-53). Every convolution is conv -> BN ->
leaky ReLU (slope 0.1), as in the darknet framework's configuration files.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgekit.zoo.common import ConvBNAct, init_weights, make_divisible
from edgekit.zoo.registry import register_model

LeakyReLU = partial(nn.LeakyReLU, 0.1)

# Darknet-19 between max pools: (3x3 output channels, number of 3x3 convs). 1x1 convs that halve
# the channels sit between consecutive 3x3 convs.
DARKNET19_STAGES = ((32, 1), (64, 1), (128, 2), (256, 2), (512, 3), (1024, 3))
# Darknet-53: (output channels of the stride-2 conv, number of residual blocks after it).
DARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def conv_bn_leaky(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> ConvBNAct:
    return ConvBNAct(in_channels, out_channels, kernel_size, stride, activation=LeakyReLU)


class ResidualBlock(nn.Module):
    """1x1 conv to half the channels -> 3x3 conv back, added to the input (YOLOv3, Table 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_leaky(channels, channels // 2, kernel_size=1)
        self.conv2 = conv_bn_leaky(channels // 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class DarkNet19(nn.Module):
    """Nineteen 3x3/1x1 convs and five max pools; the classifier is a 1x1 conv before the pool."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for index, (channels, repeats) in enumerate(DARKNET19_STAGES):
            if index > 0:
                layers.append(nn.MaxPool2d(2, 2))
            channels = make_divisible(channels * width)
            for i in range(repeats):
                if i > 0:
                    layers.append(conv_bn_leaky(in_channels, channels // 2, kernel_size=1))
                    in_channels = channels // 2
                layers.append(conv_bn_leaky(in_channels, channels))
                in_channels = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).mean((2, 3))


class DarkNet53(nn.Module):
    """A 3x3 stem, then five stages of (stride-2 3x3 conv, residual blocks); pool; fully connected."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_leaky(3, in_channels)]
        for channels, blocks in DARKNET53_STAGES:
            channels = make_divisible(channels * width)
            layers.append(conv_bn_leaky(in_channels, channels, stride=2))
            layers += [ResidualBlock(channels) for _ in range(blocks)]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@register_model("darknet19", family="darknet", paper="https://arxiv.org/abs/1612.08242")
def darknet19(num_classes: int = 1000, width: float = 1.0) -> DarkNet19:
    return DarkNet19(num_classes=num_classes, width=width)


@register_model("darknet53", family="darknet", paper="https://arxiv.org/abs/1804.02767", resolution=256)
def darknet53(num_classes: int = 1000, width: float = 1.0) -> DarkNet53:
    return DarkNet53(num_classes=num_classes, width=width)
