"""ShuffleNet: An Extremely Efficient CNN for Mobile Devices (Zhang et al., 2017).

Paper: https://arxiv.org/abs/1707.01083. Layout of Table 1: conv1 + max pool, stages 2-4 of
ShuffleNet units (4, 8, 4), global pool, fully connected. ``groups`` is the g of the pointwise
group convolutions; ``width`` is the paper's "ShuffleNet s×" filter multiplier.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import channel_shuffle, init_weights
from edgekit.zoo.registry import register_model

STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24
# Output channels of stages 2-4 for each group count (Table 1, 1x complexity ~140 MFLOPs).
STAGE_OUT_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


class ShuffleUnit(nn.Module):
    """1x1 group conv -> channel shuffle -> 3x3 depthwise -> 1x1 group conv (Figure 2b/c).

    The bottleneck is a quarter of the unit's output. With stride 2 the shortcut is a 3x3 average
    pool and the two paths are concatenated, so the residual path only produces the new channels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, group_first: bool
    ) -> None:
        super().__init__()
        self.stride = stride
        # The first pointwise layer of stage 2 sees only 24 channels: too few to split (Sec. 3.3).
        self.first_groups = groups if group_first else 1
        mid_channels = out_channels // 4
        residual_out = out_channels - in_channels if stride > 1 else out_channels
        self.gconv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, groups=self.first_groups, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.dwconv = nn.Sequential(
            nn.Conv2d(mid_channels, mid_channels, 3, stride, 1, groups=mid_channels, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.gconv2 = nn.Sequential(
            nn.Conv2d(mid_channels, residual_out, 1, groups=groups, bias=False),
            nn.BatchNorm2d(residual_out),
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride > 1 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gconv1(x)
        if self.first_groups > 1:
            out = channel_shuffle(out, self.first_groups)
        out = self.gconv2(self.dwconv(out))
        if self.stride > 1:
            return self.relu(torch.cat((self.shortcut(x), out), dim=1))
        return self.relu(x + out)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, groups: int = 3) -> None:
        super().__init__()
        if groups not in STAGE_OUT_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(STAGE_OUT_CHANNELS)}, got {groups}")
        # Each group's bottleneck (a quarter of the output) must hold whole channels.
        stage_channels = [_round_to(c * width, 4 * groups) for c in STAGE_OUT_CHANNELS[groups]]
        # A multiple of g, so that the first stride-2 unit's new channels split into g groups.
        stem_channels = _round_to(STEM_CHANNELS * width, groups)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Module] = []
        in_channels = stem_channels
        for index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, stage_channels, strict=True)):
            units = [ShuffleUnit(in_channels, out_channels, 2, groups, group_first=index > 0)]
            units += [ShuffleUnit(out_channels, out_channels, 1, groups, True) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.maxpool(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


@register_model(
    "shufflenet_v1",
    family="shufflenet_v1",
    paper="https://arxiv.org/abs/1707.01083",
    widths=(0.25, 0.5, 1.0, 1.5, 2.0),
    options={"groups": tuple(STAGE_OUT_CHANNELS)},
    defaults={"groups": 3},
    aliases=("shufflenet",),
)
def shufflenet_v1(num_classes: int = 1000, width: float = 1.0, groups: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes, width=width, groups=groups)
