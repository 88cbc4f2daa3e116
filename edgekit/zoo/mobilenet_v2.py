"""MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler et al., 2018).

Paper: https://arxiv.org/abs/1801.04381. The module layout follows torchvision's so that its
ImageNet state_dict loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import ConvBNAct, init_weights, make_divisible
from edgekit.zoo.registry import register_model

# t (expansion), c (output channels), n (repeats), s (first stride): Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear bottleneck projection (1x1, no activation)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            # Linear bottleneck: a ReLU here would destroy information in the narrow space.
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        dropout: float = 0.2,
        setting: tuple[tuple[int, int, int, int], ...] = INVERTED_RESIDUAL_SETTING,
        block: type[nn.Module] = InvertedResidual,
    ) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width)
        last_channels = make_divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [ConvBNAct(3, in_channels, stride=2)]
        for t, c, n, s in setting:
            out_channels = make_divisible(c * width)
            for i in range(n):
                features.append(block(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        features.append(ConvBNAct(in_channels, last_channels, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


@register_model(
    "mobilenet_v2",
    family="mobilenet_v2",
    paper="https://arxiv.org/abs/1801.04381",
    widths=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    pretrained="mobilenet_v2_imagenet",
)
def mobilenet_v2(num_classes: int = 1000, width: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, width=width)
