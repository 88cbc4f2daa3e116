"""ResNeXt: Aggregated Residual Transformations for Deep Neural Networks (Xie et al., 2017).

Paper: https://arxiv.org/abs/1611.05431. The module layout follows torchvision's ResNet so that
its ``resnext50_32x4d`` / ``resnext101_32x8d`` state_dicts load with ``strict=True``. ``width``
scales every stage's planes (and the stem) and keeps the cardinality.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import make_divisible
from edgekit.zoo.registry import register_model

STAGE_PLANES = (64, 128, 256, 512)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 group conv with ``cardinality`` paths -> 1x1 expand (x4), plus shortcut.

    Template (c) of Figure 3: the aggregated transformations are one grouped convolution. The
    stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5").
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        cardinality: int,
        base_width: int,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * cardinality
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt(nn.Module):
    def __init__(
        self,
        layers: tuple[int, int, int, int],
        cardinality: int,
        base_width: int,
        num_classes: int = 1000,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        planes = [make_divisible(p * width) for p in STAGE_PLANES]
        self.in_channels = planes[0]
        self.conv1 = nn.Conv2d(3, self.in_channels, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(planes[0], layers[0], 1, cardinality, base_width)
        self.layer2 = self._make_layer(planes[1], layers[1], 2, cardinality, base_width)
        self.layer3 = self._make_layer(planes[2], layers[2], 2, cardinality, base_width)
        self.layer4 = self._make_layer(planes[3], layers[3], 2, cardinality, base_width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_channels, num_classes)
        self._init_weights()

    def _make_layer(
        self, planes: int, blocks: int, stride: int, cardinality: int, base_width: int
    ) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(self.in_channels, planes, stride, cardinality, base_width, downsample)]
        self.in_channels = out_channels
        layers += [Bottleneck(out_channels, planes, 1, cardinality, base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnext50_32x4d", family="resnext", paper="https://arxiv.org/abs/1611.05431")
def resnext50_32x4d(num_classes: int = 1000, width: float = 1.0) -> ResNeXt:
    return ResNeXt((3, 4, 6, 3), cardinality=32, base_width=4, num_classes=num_classes, width=width)


@register_model("resnext101_32x8d", family="resnext", paper="https://arxiv.org/abs/1611.05431")
def resnext101_32x8d(num_classes: int = 1000, width: float = 1.0) -> ResNeXt:
    return ResNeXt((3, 4, 23, 3), cardinality=32, base_width=8, num_classes=num_classes, width=width)
