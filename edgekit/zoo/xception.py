"""Xception: Deep Learning with Depthwise Separable Convolutions (Chollet, 2017).

Paper: https://arxiv.org/abs/1610.02357. Entry, middle and exit flows of Figure 5, laid out as
Keras's ``Xception`` (22,855,952 trainable parameters): every separable convolution is a
depthwise 3x3 followed by a pointwise 1x1 without bias, then BatchNorm. Input 299x299 in [-1, 1].
``width`` scales every channel count (edgekit's extension; the paper has no multiplier).
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import init_weights, make_divisible
from edgekit.zoo.registry import register_model

ENTRY_FLOW = (128, 256, 728)  # output channels of the three strided residual blocks
MIDDLE_FLOW_REPEATS = 8


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 -> pointwise 1x1 (no non-linearity between them, as the paper prefers)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class XceptionBlock(nn.Module):
    """[ReLU -> SeparableConv2d -> BN] x len(channels), then max pool if strided, plus a shortcut.

    The shortcut is a strided 1x1 conv + BN when the block downsamples, the identity otherwise.
    ``start_with_relu=False`` for the first block, whose input is already activated.
    """

    def __init__(
        self, in_channels: int, channels: tuple[int, ...], stride: int = 1, start_with_relu: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, out in enumerate(channels):
            if i > 0 or start_with_relu:
                # Not in place on the block input: the shortcut still needs it.
                layers.append(nn.ReLU(inplace=i > 0))
            layers += [SeparableConv2d(previous, out), nn.BatchNorm2d(out)]
            previous = out
        if stride > 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, previous, 1, stride, bias=False), nn.BatchNorm2d(previous)
            )
        else:
            self.shortcut = nn.Identity()
        self.body = nn.Sequential(*layers)
        self.out_channels = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    # The two stem convolutions are unpadded ("valid"): 299 -> 149 -> 147.
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _separable_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [SeparableConv2d(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class Xception(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width)

        entry: list[nn.Module] = [*_conv_bn_relu(3, ch(32), 2), *_conv_bn_relu(ch(32), ch(64), 1)]
        channels = ch(64)
        for i, out in enumerate(ENTRY_FLOW):
            entry.append(XceptionBlock(channels, (ch(out), ch(out)), stride=2, start_with_relu=i > 0))
            channels = ch(out)
        self.entry_flow = nn.Sequential(*entry)
        self.middle_flow = nn.Sequential(
            *(XceptionBlock(channels, (channels,) * 3) for _ in range(MIDDLE_FLOW_REPEATS))
        )
        self.exit_flow = nn.Sequential(
            XceptionBlock(channels, (channels, ch(1024)), stride=2),
            *_separable_bn_relu(ch(1024), ch(1536)),
            *_separable_bn_relu(ch(1536), ch(2048)),
        )
        self.fc = nn.Linear(ch(2048), num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.exit_flow(self.middle_flow(self.entry_flow(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model(
    "xception",
    family="xception",
    paper="https://arxiv.org/abs/1610.02357",
    resolution=299,
    # Keras's "tf" preprocessing: pixels scaled to [-1, 1]. crop 299/333 as timm's legacy Xception.
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=0.8975,
)
def xception(num_classes: int = 1000, width: float = 1.0) -> Xception:
    return Xception(num_classes=num_classes, width=width)
