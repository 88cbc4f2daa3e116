"""The MobileNet line and its ancestors: every published params/MACs row of SqueezeNet, Xception,
MobileNetV1/V2/V3 and EfficientNet-Lite0, forward shapes at small inputs, and the unknown-name error.

MACs are the multiply-accumulates of convolutions and linear layers (bias excluded), counted by
torch's FlopCounterMode (FLOPs / 2) on one image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgekit.errors import UnknownModelError
from edgekit.zoo import create_model, get_entry
from edgekit.zoo.mobilenet_v1 import MobileNetV1

PARAMS_TOL, MACS_TOL = 0.02, 0.03
OWNED = (
    "squeezenet1_0",
    "squeezenet1_1",
    "xception",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_lite0",
)


def count(build: Callable[[], torch.nn.Module], resolution: int) -> tuple[int, float]:
    """(parameters, MACs) of one forward pass at ``resolution``.

    Built and run on the meta device: shapes only, no weights or arithmetic, so counting a 299 px
    Xception takes a fraction of a second on a busy machine.
    """
    with torch.device("meta"):
        model = build().eval()
        x = torch.zeros(1, 3, resolution, resolution)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops() / 2


# (name, width, resolution, params, MMACs). torchvision-defined networks must match exactly.
EXACT = [
    ("squeezenet1_0", 1.0, 224, 1_248_424, 819),
    ("squeezenet1_1", 1.0, 224, 1_235_496, 349),
    ("mobilenet_v2", 1.0, 224, 3_504_872, 301),
    ("mobilenet_v3_large", 1.0, 224, 5_483_032, 217),  # torchvision's _ops: 0.217 GFLOPS
    ("mobilenet_v3_small", 1.0, 224, 2_542_856, 57),
    ("xception", 1.0, 299, 22_855_952, 8_400),  # Keras's trainable parameters
]

# Published rows: params in millions (None: not asserted), MMACs.
PUBLISHED = [
    # MobileNetV1 paper, Table 6 (width α) and Table 7 (resolution ρ); FC layer included.
    ("mobilenet_v1", 1.0, 224, 4.23, 569),
    ("mobilenet_v1", 0.75, 224, 2.59, 325),
    ("mobilenet_v1", 0.5, 224, 1.33, 149),
    ("mobilenet_v1", 0.25, 224, 0.47, 41),
    ("mobilenet_v1", 1.0, 192, 4.23, 418),
    ("mobilenet_v1", 1.0, 160, 4.23, 290),
    ("mobilenet_v1", 1.0, 128, 4.23, 186),
    # MobileNetV2: TF-slim's checkpoint table (the paper's reference implementation; its MACs are
    # truncated to whole millions). The paper's Table 4 says 6.9M params for 1.4, TF-slim 6.06M.
    ("mobilenet_v2", 1.4, 224, 6.06, 582),
    ("mobilenet_v2", 1.3, 224, 5.34, 509),
    ("mobilenet_v2", 1.0, 224, 3.47, 300),
    ("mobilenet_v2", 1.0, 192, 3.47, 221),
    ("mobilenet_v2", 1.0, 160, 3.47, 154),
    ("mobilenet_v2", 1.0, 128, 3.47, 99),
    ("mobilenet_v2", 1.0, 96, 3.47, 56),
    ("mobilenet_v2", 0.75, 224, 2.61, 209),
    ("mobilenet_v2", 0.75, 192, 2.61, 153),
    ("mobilenet_v2", 0.75, 160, 2.61, 107),
    ("mobilenet_v2", 0.75, 128, 2.61, 69),
    ("mobilenet_v2", 0.75, 96, 2.61, 39),
    ("mobilenet_v2", 0.5, 224, 1.95, 97),
    ("mobilenet_v2", 0.5, 192, 1.95, 71),
    ("mobilenet_v2", 0.5, 160, 1.95, 50),
    ("mobilenet_v2", 0.5, 128, 1.95, 32),
    ("mobilenet_v2", 0.5, 96, 1.95, 18),
    ("mobilenet_v2", 0.35, 224, 1.66, 59),
    ("mobilenet_v2", 0.35, 192, 1.66, 43),
    ("mobilenet_v2", 0.35, 160, 1.66, 30),
    ("mobilenet_v2", 0.35, 128, 1.66, 20),
    ("mobilenet_v2", 0.35, 96, 1.66, 11),
    # MobileNetV3 paper, Table 3. Small-0.75's 2.4M is not reproducible (TF's own port has 2.04M).
    ("mobilenet_v3_large", 0.75, 224, 4.0, 155),
    ("mobilenet_v3_small", 0.75, 224, None, 44),
]


def _assert_macs(name: str, macs: float, published: float) -> None:
    # Published MACs are whole millions; allow one unit of truncation on the smallest models.
    tolerance = max(MACS_TOL * published, 1.0)
    assert abs(macs / 1e6 - published) <= tolerance, f"{name}: {macs / 1e6:.1f} MMACs vs {published}"


@pytest.mark.parametrize(("name", "width", "resolution", "params", "mmacs"), EXACT)
def test_exact_counts(name: str, width: float, resolution: int, params: int, mmacs: float) -> None:
    measured_params, macs = count(partial(create_model, name, width=width), resolution)
    assert measured_params == params
    _assert_macs(name, macs, mmacs)


@pytest.mark.parametrize(("name", "width", "resolution", "params", "mmacs"), PUBLISHED)
def test_published_counts(
    name: str, width: float, resolution: int, params: float | None, mmacs: float
) -> None:
    measured_params, macs = count(partial(create_model, name, width=width), resolution)
    if params is not None:
        assert abs(measured_params / 1e6 - params) <= PARAMS_TOL * params, f"{measured_params:,} params"
    _assert_macs(name, macs, mmacs)


@pytest.mark.parametrize(
    ("kwargs", "params", "mmacs"),
    [
        ({"separable": False}, 29.3, 4866),  # Table 4: the same network with full convolutions
        ({"shallow": True}, 2.9, 307),  # Table 5: the five 14x14x512 blocks removed
    ],
)
def test_mobilenet_v1_ablations(kwargs: dict, params: float, mmacs: float) -> None:
    measured_params, macs = count(partial(MobileNetV1, **kwargs), 224)
    assert abs(measured_params / 1e6 - params) <= PARAMS_TOL * params
    _assert_macs("mobilenet_v1", macs, mmacs)


def test_efficientnet_lite0_counts() -> None:
    # Google's Lite table: 4.7M params, 407M MACs. The released checkpoint has 4,652,008 params and
    # conv + linear MACs come to ~385M; TF's profiler counts more than those, hence the range.
    params, macs = count(partial(create_model, "efficientnet_lite0"), 224)
    assert abs(params / 1e6 - 4.7) <= PARAMS_TOL * 4.7
    assert 380 <= macs / 1e6 <= 407


def test_depthwise_separable_saving() -> None:
    # The paper's cost ratio of a separable block to a full conv is 1/N + 1/9 (Section 3.1).
    _, separable = count(MobileNetV1, 224)
    _, full = count(partial(MobileNetV1, separable=False), 224)
    assert 0.1 < separable / full < 0.14


@pytest.mark.parametrize("name", OWNED)
@pytest.mark.parametrize("resolution", [64, 96])
def test_forward_shape(name: str, resolution: int) -> None:
    model = create_model(name, num_classes=10)
    with torch.no_grad():
        out = model(torch.randn(2, 3, resolution, resolution))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "width"),
    [("squeezenet1_1", 0.5), ("xception", 0.5), ("mobilenet_v3_small", 0.75), ("efficientnet_lite0", 0.5)],
)
def test_width_shrinks(name: str, width: float) -> None:
    full_params, full_macs = count(partial(create_model, name), 64)
    params, macs = count(partial(create_model, name, width=width), 64)
    assert params < full_params and macs < full_macs


def test_registry_entries() -> None:
    assert get_entry("mobilenet_v3").name == "mobilenet_v3_large"
    assert get_entry("xception").resolution == 299
    assert get_entry("xception").resize == 333
    assert get_entry("mobilenet_v1").widths == (0.25, 0.5, 0.75, 1.0)
    assert get_entry("efficientnet_lite0").pretrained == "efficientnet_lite0_imagenet"
    for name in OWNED:
        assert get_entry(name).paper.startswith("https://arxiv.org/abs/")


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("mobilenetv2", "mobilenet_v2"), ("squeezenet1.1", "squeezenet1_1"), ("exception", "xception")],
)
def test_unknown_name_suggests(typo: str, suggestion: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        get_entry(typo)
    assert suggestion in info.value.hint
