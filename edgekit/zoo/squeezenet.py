"""SqueezeNet: AlexNet-level accuracy with 50x fewer parameters (Iandola et al., 2016).

Paper: https://arxiv.org/abs/1602.07360. Versions 1.0 (the paper's) and 1.1 (the SqueezeNet
repository's cheaper variant: 3x3 stem, earlier pooling). The layout follows torchvision's
(``features`` / ``classifier``, a 1x1 conv classifier with ReLU and global average pooling).

``width`` scales the Fire modules' squeeze and expand channels: edgekit's own extension, the paper
varies the squeeze ratio and the 3x3 share instead. The stem and the classifier are not scaled.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.zoo.common import make_divisible
from edgekit.zoo.registry import register_model

# Fire modules as (squeeze, expand 1x1, expand 3x3); "M" is a 3x3/2 max pool (ceil mode, as Caffe).
FIRE_SETTINGS: dict[str, tuple] = {
    "1_0": (
        (16, 64, 64),
        (16, 64, 64),
        (32, 128, 128),
        "M",
        (32, 128, 128),
        (48, 192, 192),
        (48, 192, 192),
        (64, 256, 256),
        "M",
        (64, 256, 256),
    ),
    "1_1": (
        (16, 64, 64),
        (16, 64, 64),
        "M",
        (32, 128, 128),
        (32, 128, 128),
        "M",
        (48, 192, 192),
        (48, 192, 192),
        (64, 256, 256),
        (64, 256, 256),
    ),
}
STEMS = {"1_0": (96, 7), "1_1": (64, 3)}  # (channels, kernel), stride 2, no padding


class FireModule(nn.Module):
    """Squeeze (1x1) -> expand (1x1 and 3x3 in parallel, concatenated)."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    def __init__(
        self, version: str = "1_0", num_classes: int = 1000, width: float = 1.0, dropout: float = 0.5
    ) -> None:
        super().__init__()
        channels, kernel = STEMS[version]
        layers: list[nn.Module] = [
            nn.Conv2d(3, channels, kernel_size=kernel, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        ]
        for setting in FIRE_SETTINGS[version]:
            if setting == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
                continue
            fire = FireModule(channels, *(make_divisible(c * width) for c in setting))
            layers.append(fire)
            channels = fire.out_channels
        self.features = nn.Sequential(*layers)
        # The classifier is a 1x1 conv: no fully connected layer at all, as in the paper.
        final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        self._init_weights(final_conv)

    def _init_weights(self, final_conv: nn.Conv2d) -> None:
        # torchvision's: Kaiming-uniform convs, a small normal init for the classifier conv.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


@register_model(
    "squeezenet1_0", family="squeezenet", paper="https://arxiv.org/abs/1602.07360", aliases=("squeezenet",)
)
def squeezenet1_0(num_classes: int = 1000, width: float = 1.0) -> SqueezeNet:
    return SqueezeNet("1_0", num_classes=num_classes, width=width)


@register_model("squeezenet1_1", family="squeezenet", paper="https://arxiv.org/abs/1602.07360")
def squeezenet1_1(num_classes: int = 1000, width: float = 1.0) -> SqueezeNet:
    return SqueezeNet("1_1", num_classes=num_classes, width=width)
