"""MnasNet: Platform-Aware Neural Architecture Search for Mobile (Tan et al., 2019).

Paper: https://arxiv.org/abs/1807.11626. ``mnasnet_b1`` is the SE-free search result that
torchvision ships as ``mnasnet1_0`` (same module layout, so its state_dict loads with
``strict=True``); ``mnasnet`` is MnasNet-A1 of Figure 7, with squeeze-and-excitation.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import init_weights, make_divisible
from edgekit.zoo.registry import register_model

# TensorFlow's batch-norm momentum, as in the released checkpoints.
BN_MOMENTUM = 1 - 0.9997
LAST_CHANNELS = 1280

# Stacks after the SepConv: (expansion, kernel, stride, repeats, output channels, squeeze-excite).
MNASNET_A1 = (
    (6, 3, 2, 2, 24, False),
    (3, 5, 2, 3, 40, True),
    (6, 3, 2, 4, 80, False),
    (6, 3, 1, 2, 112, True),
    (6, 5, 2, 3, 160, True),
    (6, 3, 1, 1, 320, False),
)
MNASNET_B1 = (
    (3, 3, 2, 3, 24, False),
    (3, 5, 2, 3, 40, False),
    (6, 5, 2, 3, 80, False),
    (6, 3, 1, 2, 96, False),
    (6, 5, 2, 4, 192, False),
    (6, 3, 1, 1, 320, False),
)


def _conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    stride: int = 1,
    groups: int = 1,
    relu: bool = True,
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def sep_conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """SepConv (k3x3): depthwise 3x3 -> linear 1x1 projection, the first block of both models."""
    return [
        *_conv_bn(in_channels, in_channels, 3, groups=in_channels),
        *_conv_bn(in_channels, out_channels, relu=False),
    ]


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = torch.sigmoid(self.expand(torch.relu(self.reduce(scale))))
        return x * scale


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> kxk depthwise -> [SE] -> linear 1x1 projection."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int, se: bool
    ) -> None:
        super().__init__()
        mid_channels = in_channels * expansion
        self.apply_residual = in_channels == out_channels and stride == 1
        layers = [
            *_conv_bn(in_channels, mid_channels),
            *_conv_bn(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels),
        ]
        if se:
            # The squeeze width is a quarter of the block's input, as in the TensorFlow release.
            layers.append(SqueezeExcitation(mid_channels, max(1, in_channels // 4)))
        layers += _conv_bn(mid_channels, out_channels, relu=False)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.apply_residual else self.layers(x)


def _stack(
    in_channels: int, out_channels: int, expansion: int, kernel: int, stride: int, repeats: int, se: bool
) -> nn.Sequential:
    blocks = [MBConv(in_channels, out_channels, kernel, stride, expansion, se)]
    blocks += [MBConv(out_channels, out_channels, kernel, 1, expansion, se) for _ in range(repeats - 1)]
    return nn.Sequential(*blocks)


class MNASNet(nn.Module):
    """Stem conv -> SepConv -> six MBConv stacks -> 1x1 conv to 1280 (not scaled) -> classifier."""

    def __init__(
        self,
        stacks: tuple[tuple[int, int, int, int, int, bool], ...],
        num_classes: int = 1000,
        width: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        stem = make_divisible(32 * width)
        sep_out = make_divisible(16 * width)
        layers: list[nn.Module] = [*_conv_bn(3, stem, 3, 2), *sep_conv(stem, sep_out)]
        in_channels = sep_out
        for expansion, kernel, stride, repeats, channels, se in stacks:
            out_channels = make_divisible(channels * width)
            layers.append(_stack(in_channels, out_channels, expansion, kernel, stride, repeats, se))
            in_channels = out_channels
        layers += _conv_bn(in_channels, LAST_CHANNELS)
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout, inplace=True), nn.Linear(LAST_CHANNELS, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(x).mean((2, 3)))


@register_model(
    "mnasnet",
    family="mnasnet",
    paper="https://arxiv.org/abs/1807.11626",
    widths=(0.5, 0.75, 1.0, 1.4),
    aliases=("mnasnet_a1",),
)
def mnasnet(num_classes: int = 1000, width: float = 1.0) -> MNASNet:
    return MNASNet(MNASNET_A1, num_classes=num_classes, width=width)


@register_model(
    "mnasnet_b1",
    family="mnasnet",
    paper="https://arxiv.org/abs/1807.11626",
    widths=(0.5, 0.75, 1.0, 1.3),
    aliases=("mnasnet1_0",),
)
def mnasnet_b1(num_classes: int = 1000, width: float = 1.0) -> MNASNet:
    return MNASNet(MNASNET_B1, num_classes=num_classes, width=width)
