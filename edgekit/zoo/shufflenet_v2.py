"""ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design (Ma et al., 2018).

Paper: https://arxiv.org/abs/1807.11164. The module layout follows torchvision's so that its
ImageNet state_dict loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import channel_shuffle, init_weights, make_divisible
from edgekit.zoo.registry import register_model

STAGE_REPEATS = (4, 8, 4)
# Output channels of conv1, stages 2-4 and conv5 for the widths of the paper's Table 5.
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def _depthwise(channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    ]


def _pointwise(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _stem(out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(3, out_channels, 3, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """Channel split -> (1x1, 3x3 depthwise, 1x1) on one half -> concat -> shuffle (Figure 3c/d).

    With stride 2 there is no split: both branches see the whole input and each gives half the
    output channels, so the width doubles while the resolution halves.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_depthwise(in_channels, stride), *_pointwise(in_channels, branch_channels)
            )
        else:
            self.branch1 = nn.Sequential()
        branch2_in = in_channels if stride > 1 else branch_channels
        self.branch2 = nn.Sequential(
            *_pointwise(branch2_in, branch_channels),
            *_depthwise(branch_channels, stride),
            *_pointwise(branch_channels, branch_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def stage_out_channels(width: float) -> tuple[int, ...]:
    """The paper's channels for its four widths; other widths scale the 1.0x stages."""
    if width in STAGE_OUT_CHANNELS:
        return STAGE_OUT_CHANNELS[width]
    stages = tuple(make_divisible(c * width, 4) for c in STAGE_OUT_CHANNELS[1.0][1:4])
    return (24, *stages, 2048 if width > 1.5 else 1024)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        channels = stage_out_channels(width)
        self.conv1 = nn.Sequential(*_stem(channels[0]))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = channels[0]
        for index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, channels[1:4], strict=True)):
            units = [InvertedResidual(in_channels, out_channels, 2)]
            units += [InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index + 2}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = nn.Sequential(*_pointwise(in_channels, channels[-1]))
        self.fc = nn.Linear(channels[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean((2, 3))
        return self.fc(x)


@register_model(
    "shufflenet_v2",
    family="shufflenet_v2",
    paper="https://arxiv.org/abs/1807.11164",
    widths=tuple(STAGE_OUT_CHANNELS),
    aliases=("shufflenetv2",),
)
def shufflenet_v2(num_classes: int = 1000, width: float = 1.0) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, width=width)
