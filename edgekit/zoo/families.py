"""Imports every family module so that its variants register themselves."""

from edgekit.zoo import (  # noqa: F401
    condensenet,
    darknet,
    efficientnet_lite,
    igcv3,
    mnasnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    resnext,
    shufflenet_v1,
    shufflenet_v2,
    squeezenet,
    xception,
)
