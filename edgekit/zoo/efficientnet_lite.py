"""EfficientNet-Lite: EfficientNet (Tan & Le, 2019) made friendly to mobile accelerators and int8.

Paper: https://arxiv.org/abs/1905.11946; the Lite changes are Google's
(https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite): no
squeeze-and-excite, ReLU6 instead of swish, and the stem (32) and head (1280) kept fixed when the
network is scaled. Lite0 is EfficientNet-B0's MBConv layout with those changes; it expects input
in [-1, 1]. Module names are edgekit's; ``edgekit.zoo.weights`` maps the ported TF weights on them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from edgekit.zoo import common
from edgekit.zoo.common import ConvBNAct, init_weights, make_divisible
from edgekit.zoo.registry import register_model

# TF's BatchNorm epsilon and momentum, which the ported weights were trained with.
BatchNorm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)

# expand ratio, kernel, first stride, output channels, repeats: EfficientNet-B0, Table 1.
MBCONV_SETTING = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


class SameConvBNAct(ConvBNAct):
    """ConvBNAct with TF's "SAME" padding: the odd pixel of a strided conv goes bottom/right.

    PyTorch's symmetric padding shifts every strided conv by half a pixel against the TF-trained
    weights, which costs them several points of top-1. Shapes are static once traced, so the pad
    exports as one constant Pad op.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, **kwargs: Any
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, **kwargs)
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(common.pad_same(x, self.kernel_size, self.stride))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> kxk depthwise -> linear 1x1 project (+ identity)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        conv = partial(ConvBNAct, norm_layer=BatchNorm)
        self.expand = conv(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        depthwise = partial(SameConvBNAct, norm_layer=BatchNorm) if stride > 1 else conv
        self.depthwise = depthwise(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv(hidden, out_channels, 1, activation=None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_res_connect else out


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = SameConvBNAct(3, STEM_CHANNELS, 3, 2, norm_layer=BatchNorm)
        blocks: list[nn.Module] = []
        in_channels = STEM_CHANNELS
        for expand_ratio, kernel, stride, channels, repeats in MBCONV_SETTING:
            out_channels = make_divisible(channels * width)
            for i in range(repeats):
                first_stride = stride if i == 0 else 1
                blocks.append(MBConv(in_channels, out_channels, kernel, first_stride, expand_ratio))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(in_channels, HEAD_CHANNELS, 1, norm_layer=BatchNorm)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model(
    "efficientnet_lite0",
    family="efficientnet_lite",
    paper="https://arxiv.org/abs/1905.11946",
    # TF's Lite preprocessing: (pixel - 127) / 128, i.e. roughly [-1, 1].
    mean=(0.498, 0.498, 0.498),
    std=(0.502, 0.502, 0.502),
    pretrained="efficientnet_lite0_imagenet",
)
def efficientnet_lite0(num_classes: int = 1000, width: float = 1.0) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes, width=width)
