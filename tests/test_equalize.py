"""BN folding, cross-layer equalisation and bias correction keep (or fix) what they promise."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from calibration.equalize import (
    ChannelClamp,
    bias_correct,
    cross_layer_equalize,
    output_ranges,
)
from calibration.fakequant import fake_quantize_weights_, sqnr_db
from calibration.grid import WeightGrid
from exporters.rewrites import fold_batchnorm


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
            # Very different gammas per channel: the spread CLE has to remove.
            m.weight.data.copy_(torch.exp(torch.randn(n, generator=gen) * 1.5))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)
    return model.eval()


def _block(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Expand 1x1 -> depthwise 3x3 -> project 1x1, the MobileNetV2 inverted residual body."""
    return nn.Sequential(
        nn.Conv2d(8, 32, 1, bias=False),
        nn.BatchNorm2d(32),
        act(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
        nn.BatchNorm2d(32),
        act(),
        nn.Conv2d(32, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 10),
    )


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(8, 8, 12, 12, generator=torch.Generator().manual_seed(1)) * 2


def test_fold_batchnorm_is_exact(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_block())
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(copy.deepcopy(model))
        out = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_cle_keeps_function_and_equalises_depthwise(x: torch.Tensor, act: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_block(act))
    with torch.no_grad():
        ref = model(x)
    dw_before = fold_batchnorm(copy.deepcopy(model))[3].weight
    spread_before = float(output_ranges(dw_before).max() / output_ranges(dw_before).min())
    report = cross_layer_equalize(model)  # relu6="clip": exact
    with torch.no_grad():
        out = model(x)
    assert report["pairs"] == 2
    assert _rel_err(out, ref) < 1e-4
    r = output_ranges(model[3].weight)
    spread_after = float(r.max() / r.min())
    assert spread_after < 0.8 * spread_before
    if act is nn.ReLU6:
        assert isinstance(model[2], ChannelClamp) and isinstance(model[5], ChannelClamp)


def test_cle_relu_mode_exact_without_clipping(x: torch.Tensor) -> None:
    # The paper's ReLU6 -> ReLU swap changes only activations that exceeded 6: none at this scale.
    torch.manual_seed(0)
    model = _randomize_bn(_block(nn.ReLU6))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # no offsets: pre-activations scale with the input
            m.running_mean.zero_()
            m.bias.data.zero_()
    small = x * 1e-3
    with torch.no_grad():
        ref = model(small)
        assert float(model[:6](small).max()) < 6.0 and float(model[:3](small).max()) < 6.0
    cross_layer_equalize(model, relu6="relu")
    assert not any(isinstance(m, nn.ReLU6 | ChannelClamp) for m in model.modules())
    with torch.no_grad():
        assert _rel_err(model(small), ref) < 1e-4


def test_cle_improves_per_tensor_output_sqnr(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = fold_batchnorm(_randomize_bn(_block()))
    equalized = copy.deepcopy(model)
    cross_layer_equalize(equalized)

    def quantized_sqnr(m: nn.Module) -> float:
        q = copy.deepcopy(m)
        fake_quantize_weights_(q, WeightGrid(8, per_channel=False))
        with torch.no_grad():
            return sqnr_db(model(x), q(x))

    assert quantized_sqnr(equalized) > quantized_sqnr(model) + 2.0


def test_bias_correction_reduces_output_mean_error() -> None:
    torch.manual_seed(0)
    model = fold_batchnorm(_randomize_bn(_block()))
    calib = [torch.randn(16, 8, 12, 12, generator=torch.Generator().manual_seed(s)) * 2 for s in range(4)]
    held_out = torch.randn(64, 8, 12, 12, generator=torch.Generator().manual_seed(99)) * 2

    def mean_error(corrected: bool) -> float:
        m = copy.deepcopy(model)
        if corrected:
            report = bias_correct(m, calib, WeightGrid(8, per_channel=False))
            assert report["layers"] == 4 and report["max_abs_shift"] > 0
        fake_quantize_weights_(m, WeightGrid(8, per_channel=False))
        with torch.no_grad():
            return float((m(held_out) - model(held_out)).mean(dim=0).abs().mean())

    assert mean_error(corrected=True) < 0.7 * mean_error(corrected=False)


def _mobilenet_v2() -> nn.Module:
    from edgekit.zoo.mobilenet_v2 import MobileNetV2

    return MobileNetV2(num_classes=10)


def _efficientnet_lite() -> nn.Module:
    from edgekit.zoo.efficientnet_lite import EfficientNetLite

    return EfficientNetLite(num_classes=10)


# MobileNetV2: expand->dw and dw->project in 16 blocks, stem->first dw, linear project->conv links
# where no residual reads the projection. EfficientNet-Lite0: the same in its 16 blocks (the first
# has no expansion); its 4 strided depthwise convs are reached through their TF "SAME" pad, a leaf
# call for torch.fx (fx could not trace the network before, and CLE found no pair).
@pytest.mark.parametrize(("build", "pairs"), [(_mobilenet_v2, 36), (_efficientnet_lite, 34)])
def test_cle_exact_with_relu6_clip(build, pairs: int) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    report = cross_layer_equalize(model)
    with torch.no_grad():
        out = model(x)
    assert report["pairs"] == pairs
    assert report["spread_after"] < report["spread_before"]
    assert _rel_err(out, ref) < 1e-4


def test_stream_equalisation_is_exact_and_evens_out_a_loud_channel() -> None:
    """One channel of MobileNetV2's 160-channel residual stream made 30x louder: after stream
    equalisation the stream's channel ranges are even again, the float function unchanged."""
    from calibration.equalize import equalize_streams
    from edgekit.zoo.mobilenet_v2 import MobileNetV2

    torch.manual_seed(0)
    model = fold_batchnorm(_randomize_bn(MobileNetV2(num_classes=10)))
    with torch.no_grad():
        for i in (14, 15, 16):  # the stage's three projections write channel 0 of the stream
            project = model.features[i].conv[2]
            project.weight[0] *= 30.0
            project.bias[0] *= 30.0
    calib = [torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    report = equalize_streams(model, calib)
    with torch.no_grad():
        out = model(x)
    assert report["streams"] == 7 and report["tensors"] == 27
    assert report["spread_before_max"] > 10 and report["spread_after_max"] < report["spread_before_max"] / 3
    assert _rel_err(out, ref) < 1e-4


def test_streams_skip_what_is_not_linear() -> None:
    """A residual add followed by ReLU (ResNet-style) is no linear stream: nothing is rescaled."""
    from calibration.equalize import equalize_streams

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), Residual(), Residual()).eval()
    before = [p.clone() for p in model.parameters()]
    report = equalize_streams(model, [torch.randn(4, 3, 16, 16)])
    assert report["streams"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_remedies_run_channels_last_and_hand_back_contiguous_weights() -> None:
    """The remedies' passes run on channels-last weights (calibration.layout); the exporters get
    contiguous ones back, and a network with a 5-D weight, which that layout cannot hold, as is."""
    import numpy as np

    from calibration import layout
    from calibration.config import QuantConfig
    from calibration.grid import INT8_GRID
    from calibration.int8 import apply_remedies

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    assert layout.for_passes(copy.deepcopy(model))[0].weight.is_contiguous(memory_format=torch.channels_last)
    tensors = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    models, remedies = apply_remedies(model, tensors, QuantConfig(), {"onnx-int8": INT8_GRID})
    assert {r["name"] for r in remedies} == {"equalize_streams", "bias_correct"}
    remedied = models["onnx-int8"]
    assert all(p.is_contiguous() for p in remedied.parameters())
    assert not remedied[0].weight.is_contiguous(memory_format=torch.channels_last)
    volumetric = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv2d(2, 2, 3))
    assert layout.for_passes(volumetric) is volumetric
    assert volumetric[0].weight.is_contiguous() and volumetric[1].weight.is_contiguous()
