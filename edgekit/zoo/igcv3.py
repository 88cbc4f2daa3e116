"""IGCV3: Interleaved Low-Rank Group Convolutions for Efficient Deep Neural Networks (Sun et al., 2018).

Paper: https://arxiv.org/abs/1806.00178. IGCV3-D: MobileNetV2's layout with twice the blocks in
the middle stages, and each block's two pointwise convolutions split into two groups, interleaved
by permutations so that every output still depends on every input (the authors' MXNet release).
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import ConvBNAct, channel_shuffle
from edgekit.zoo.mobilenet_v2 import MobileNetV2
from edgekit.zoo.registry import register_model

POINTWISE_GROUPS = 2
# t (expansion), c (output channels), n (repeats), s (first stride): MobileNetV2's Table 2 with
# the repeats of stages 2-6 doubled ("D" for deeper).
IGCV3_D_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 4, 2),
    (6, 32, 6, 2),
    (6, 64, 8, 2),
    (6, 96, 6, 1),
    (6, 160, 6, 2),
    (6, 320, 1, 1),
)


class IGCV3Block(nn.Module):
    """Group 1x1 (expand) -> permutation -> 3x3 depthwise -> group 1x1 (project) -> permutation.

    The first group convolution is linear, as in the released network: the block's only ReLU6
    follows the depthwise layer. The second permutation is the inverse interleaving, so that the
    next block's groups again mix both halves.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.expand = ConvBNAct(in_channels, hidden, kernel_size=1, groups=POINTWISE_GROUPS, activation=None)
        self.depthwise = ConvBNAct(hidden, hidden, stride=stride, groups=hidden)
        self.project = ConvBNAct(
            hidden, out_channels, kernel_size=1, groups=POINTWISE_GROUPS, activation=None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.expand(x), POINTWISE_GROUPS)
        out = self.project(self.depthwise(out))
        out = channel_shuffle(out, out.shape[1] // POINTWISE_GROUPS)
        return x + out if self.use_res_connect else out


class IGCV3(MobileNetV2):
    """MobileNetV2's stem, head and classifier around IGCV3-D's blocks."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__(num_classes, width, dropout, setting=IGCV3_D_SETTING, block=IGCV3Block)


@register_model(
    "igcv3",
    family="igcv3",
    paper="https://arxiv.org/abs/1806.00178",
    widths=(0.5, 0.7, 1.0),
    aliases=("igcv3_d",),
)
def igcv3(num_classes: int = 1000, width: float = 1.0) -> IGCV3:
    return IGCV3(num_classes=num_classes, width=width)
