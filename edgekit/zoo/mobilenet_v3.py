"""MobileNetV3: Searching for MobileNetV3 (Howard et al., 2019).

Paper: https://arxiv.org/abs/1905.02244. Large and Small as in Tables 1 and 2; the module layout
and channel rounding follow torchvision's, so its ImageNet state_dicts load with ``strict=True``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgekit.zoo.common import ConvBNAct, init_weights, make_divisible
from edgekit.zoo.registry import register_model

# TF's BatchNorm defaults, which the paper's models were trained with.
BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)

# kernel, expanded channels, output channels, squeeze-and-excite, h-swish, stride (Tables 1 and 2);
# every block's input is the previous one's output, starting from the 16-channel stem.
LARGE_SETTING = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
SMALL_SETTING = (
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
)
LAST_CHANNELS = {"large": 1280, "small": 1024}


class SqueezeExcitation(nn.Module):
    """Global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hard sigmoid -> channel-wise scale."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


class InvertedResidual(nn.Module):
    """MobileNetV2's block with optional squeeze-and-excite and h-swish (Figure 4 of the paper)."""

    def __init__(
        self,
        in_channels: int,
        kernel: int,
        expanded: int,
        out_channels: int,
        use_se: bool,
        use_hs: bool,
        stride: int,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        activation = nn.Hardswish if use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, activation=activation, norm_layer=BatchNorm))
        layers.append(
            ConvBNAct(
                expanded,
                expanded,
                kernel,
                stride,
                groups=expanded,
                activation=activation,
                norm_layer=BatchNorm,
            )
        )
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, out_channels, 1, activation=None, norm_layer=BatchNorm))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(nn.Module):
    def __init__(
        self, arch: str = "large", num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        setting = {"large": LARGE_SETTING, "small": SMALL_SETTING}[arch]
        in_channels = make_divisible(16 * width)
        layers: list[nn.Module] = [
            ConvBNAct(3, in_channels, stride=2, activation=nn.Hardswish, norm_layer=BatchNorm)
        ]
        base_in = 16
        for kernel, expanded, out, use_se, use_hs, stride in setting:
            out_channels = make_divisible(out * width)
            # The expansion is a ratio of the (rounded) input, as in TF-slim: identical to torchvision at
            # width 1.0, and the paper's counts at 0.75 (torchvision scales `expanded` directly instead).
            hidden = make_divisible(in_channels * expanded / base_in)
            layers.append(InvertedResidual(in_channels, kernel, hidden, out_channels, use_se, use_hs, stride))
            in_channels, base_in = out_channels, out
        layers.append(
            ConvBNAct(in_channels, 6 * in_channels, 1, activation=nn.Hardswish, norm_layer=BatchNorm)
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # The last layer keeps its width below 1.0 (TF-slim's finegrain_classification_mode).
        last_channels = make_divisible(LAST_CHANNELS[arch] * max(1.0, width))
        self.classifier = nn.Sequential(
            nn.Linear(6 * in_channels, last_channels),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channels, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model(
    "mobilenet_v3_large",
    family="mobilenet_v3",
    paper="https://arxiv.org/abs/1905.02244",
    widths=(0.75, 1.0),
    aliases=("mobilenet_v3",),
)
def mobilenet_v3_large(num_classes: int = 1000, width: float = 1.0) -> MobileNetV3:
    return MobileNetV3("large", num_classes=num_classes, width=width)


@register_model(
    "mobilenet_v3_small",
    family="mobilenet_v3",
    paper="https://arxiv.org/abs/1905.02244",
    widths=(0.75, 1.0),
)
def mobilenet_v3_small(num_classes: int = 1000, width: float = 1.0) -> MobileNetV3:
    return MobileNetV3("small", num_classes=num_classes, width=width)
