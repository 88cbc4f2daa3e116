"""MobileNetV1: Efficient Convolutional Neural Networks for Mobile Vision Applications (Howard et al., 2017).

Paper: https://arxiv.org/abs/1704.04861. TF-slim layout (the paper's reference implementation):
a 3x3/2 stem with 32 channels, 13 depthwise separable blocks, global average pooling and one
fully connected layer. The width multiplier α is ``width``; the resolution multiplier ρ is the
input size. ``separable=False`` and ``shallow=True`` give the paper's Table 4 and Table 5 baselines.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import ConvBNAct, init_weights
from edgekit.zoo.registry import register_model

# (output channels, stride) of the 13 depthwise separable blocks: Table 1 of the paper.
DEPTHWISE_SEPARABLE_SETTING = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),  # the five 14x14 blocks Table 5 removes
    (1024, 2),
    (1024, 1),
)
SHALLOW_REMOVED = range(6, 11)


def scaled_channels(channels: int, width: float) -> int:
    """TF-slim's rule: ``max(int(channels * α), 8)`` (no rounding to a multiple of 8)."""
    return max(int(channels * width), 8)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 conv -> BN -> ReLU, then pointwise 1x1 conv -> BN -> ReLU (Figure 3)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, stride=stride, groups=in_channels),
            ConvBNAct(in_channels, out_channels, kernel_size=1),
        )
        self.out_channels = out_channels


class MobileNetV1(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        dropout: float = 0.001,
        separable: bool = True,
        shallow: bool = False,
    ) -> None:
        super().__init__()
        in_channels = scaled_channels(32, width)
        features: list[nn.Module] = [ConvBNAct(3, in_channels, stride=2)]
        for i, (channels, stride) in enumerate(DEPTHWISE_SEPARABLE_SETTING):
            if shallow and i in SHALLOW_REMOVED:
                continue
            out_channels = scaled_channels(channels, width)
            if separable:
                features.append(DepthwiseSeparableConv(in_channels, out_channels, stride))
            else:  # the "conv MobileNet" of Table 4: each block a full 3x3 convolution
                features.append(ConvBNAct(in_channels, out_channels, stride=stride))
            in_channels = out_channels
        self.features = nn.Sequential(*features)
        # TF-slim's dropout keep_prob is 0.999: a near no-op kept for parity with its training.
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


@register_model(
    "mobilenet_v1",
    family="mobilenet_v1",
    paper="https://arxiv.org/abs/1704.04861",
    widths=(0.25, 0.5, 0.75, 1.0),
)
def mobilenet_v1(num_classes: int = 1000, width: float = 1.0) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, width=width)
