"""CondenseNet: An Efficient DenseNet using Learned Group Convolutions (Huang et al., 2018).

Paper: https://arxiv.org/abs/1711.09224. The ImageNet CondenseNet-74 (dense blocks of 4-6-8-10-8
layers, growth 8-16-32-64-128) in its deploy form, after condensation: every learned group
convolution has become an index selection of the input channels each group kept, a standard
group 1x1 convolution and a channel shuffle (Figure 1, right). ``groups`` is G = C (groups =
condensation factor). With random weights the kept channels are drawn from a seeded generator;
the shapes, hence the parameter and multiply-add counts, do not depend on which are kept.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import channel_shuffle, init_weights
from edgekit.zoo.registry import register_model

STAGES = (4, 6, 8, 10, 8)
GROWTH = (8, 16, 32, 64, 128)
BOTTLENECK = 4  # the 1x1 layer outputs bottleneck x growth channels, as in DenseNet-BC
CLASSIFIER_KEEP = 0.5  # the condensed classifier keeps half of the final features


def _kept_channels(in_channels: int, keep: int, groups: int, seed: int) -> torch.Tensor:
    """Stand-in for the indices condensation keeps: ``keep`` distinct inputs for each group."""
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(in_channels, generator=generator)[:keep].sort().values for _ in range(groups)]
    return torch.cat(picks)


class CondenseConv(nn.Module):
    """A condensed learned group convolution: gather kept inputs -> BN -> ReLU -> group 1x1 -> shuffle.

    Each of the G groups keeps 1/C of the input channels, so the gathered tensor has G/C times
    the input width and the grouped convolution costs 1/C of the dense one. The indices are a
    constant buffer, so both exporters see a fixed Gather.
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, condense_factor: int, seed: int
    ) -> None:
        super().__init__()
        keep = in_channels // condense_factor
        self.groups = groups
        self.register_buffer("index", _kept_channels(in_channels, keep, groups, seed))
        self.norm = nn.BatchNorm2d(keep * groups)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(keep * groups, out_channels, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.relu(self.norm(torch.index_select(x, 1, self.index))))
        return channel_shuffle(x, self.groups)


class DenseLayer(nn.Module):
    """Condensed 1x1 (to 4k channels) -> BN-ReLU-3x3 group conv (to k) -> concatenated to the input."""

    def __init__(self, in_channels: int, growth: int, groups: int, seed: int) -> None:
        super().__init__()
        self.conv1 = CondenseConv(in_channels, BOTTLENECK * growth, groups, groups, seed)
        self.conv2 = nn.Sequential(
            nn.BatchNorm2d(BOTTLENECK * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(BOTTLENECK * growth, growth, 3, padding=1, groups=groups, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv2(self.conv1(x))), dim=1)


class CondenseLinear(nn.Module):
    """The classifier after condensation: a fixed selection of half the features -> Linear."""

    def __init__(self, in_features: int, out_features: int, seed: int) -> None:
        super().__init__()
        keep = int(in_features * CLASSIFIER_KEEP)
        self.register_buffer("index", _kept_channels(in_features, keep, 1, seed))
        self.linear = nn.Linear(keep, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.index_select(x, 1, self.index))


class CondenseNet(nn.Module):
    """3x3 stem (stride 2) -> dense blocks joined by 2x2 average pools -> BN-ReLU -> pool -> classifier.

    Dense connections span whole blocks only; growth doubles from one block to the next.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, groups: int = 4, seed: int = 0) -> None:
        super().__init__()
        # Growth must split into the G groups of the 3x3 convolution.
        growth = [max(groups, round(k * width / groups) * groups) for k in GROWTH]
        channels = 2 * growth[0]
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, 2, 1, bias=False)]
        for index, (repeats, k) in enumerate(zip(STAGES, growth, strict=True)):
            if index > 0:
                layers.append(nn.AvgPool2d(2, 2))
            for _ in range(repeats):
                layers.append(DenseLayer(channels, k, groups, seed=seed + len(layers)))
                channels += k
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = CondenseLinear(channels, num_classes, seed=seed + len(layers))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


@register_model(
    "condensenet",
    family="condensenet",
    paper="https://arxiv.org/abs/1711.09224",
    options={"groups": (4, 8)},
    defaults={"groups": 4},
    aliases=("condensenet74",),
)
def condensenet(num_classes: int = 1000, width: float = 1.0, groups: int = 4) -> CondenseNet:
    return CondenseNet(num_classes=num_classes, width=width, groups=groups)
