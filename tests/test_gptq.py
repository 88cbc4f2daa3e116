"""GPTQ rounding: weights on the quantisers' grid, lower layer-output error than nearest rounding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from calibration import gptq
from calibration.fakequant import grid_step, layer_reads_pairs, quantize_weight, sqnr_db
from calibration.grid import PAIR_LIMIT, WeightGrid, max_pair_sums


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(24, 48, 1),
        nn.ReLU(),
        nn.Conv2d(48, 48, 3, padding=1, groups=48),
        nn.ReLU(),
        nn.Conv2d(48, 32, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(32, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def _inputs(n: int, seed: int) -> torch.Tensor:
    # Correlated pixels, as in images: GPTQ gains from the correlation of a layer's inputs.
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(x, size=24, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_columns_and_weights_reproduce_the_convolution(groups: int) -> None:
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 16, 9, 9)
    cols, w = gptq._columns(conv, x), gptq._weights(conv).float()
    out = (w @ cols).reshape(32, 2, -1).permute(1, 0, 2)  # [g, o, B*L] -> [B, C, L]
    assert torch.allclose(out, conv(x).reshape(2, 32, -1), atol=1e-5)


@pytest.mark.parametrize(("bits", "per_channel"), [(8, True), (6, False), (4, True), (4, False)])
def test_weights_are_on_the_grid_and_beat_nearest_rounding(bits: int, per_channel: bool) -> None:
    model = _net()
    calib = _inputs(64, seed=1)
    rounded, report = gptq.gptq_weights(
        model, [calib[i : i + 16] for i in range(0, 64, 16)], WeightGrid(bits, per_channel)
    )
    assert report["layers"] == len(rounded) == 6
    # Every layer's output error on the calibration data is below nearest rounding's.
    assert report["error_ratio_max"] < 1.0 and report["error_ratio_median"] < 0.9
    nearest = copy.deepcopy(model)
    for name, w in rounded.items():
        layer = model.get_submodule(name)
        # On the grid, with the same peak: the int8 quantisers re-round nothing.
        assert torch.equal(quantize_weight(w, bits, per_channel), w)
        peak = (
            (lambda t: t.abs().reshape(t.shape[0], -1).amax(1)) if per_channel else (lambda t: t.abs().amax())
        )
        assert torch.allclose(peak(w), peak(layer.weight.detach()))
        nearest.get_submodule(name).weight.data.copy_(quantize_weight(layer.weight, bits, per_channel))
    # And on held-out inputs, the network's output is closer to float than with nearest rounding.
    held_out = _inputs(64, seed=2)
    with torch.no_grad():
        ref, base = model(held_out), nearest(held_out)
        for name, w in rounded.items():
            model.get_submodule(name).weight.data.copy_(w)
        out = model(held_out)
    assert sqnr_db(ref, out) > sqnr_db(ref, base) + 1.0


def test_gptq_remedy_runs_before_bias_correction() -> None:
    from calibration.config import QuantConfig
    from calibration.int8 import apply_remedies

    model = _net()
    calib = _inputs(32, seed=3).numpy()
    config = QuantConfig(gptq=True, equalize_streams=False, per_tensor=True, weight_bits=6)
    models, remedies = apply_remedies(model, calib, config, {"w6": WeightGrid(6, per_channel=False)})
    prepared = models["w6"]
    assert [r["name"] for r in remedies] == ["gptq", "bias_correct"]
    assert remedies[0]["weight_bits"] == 6 and remedies[0]["per_channel"] is False
    for name, layer in prepared.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = layer.weight.detach()
            assert torch.equal(quantize_weight(w, 6, False), w), name
    # Bias correction measured the GPTQ weights' error against the float model, not zero.
    assert remedies[1]["max_abs_shift"] > 0
    assert not np.allclose(prepared[0].bias.detach(), model[0].bias.detach())


def test_gptq_keeps_every_same_sign_pair_within_the_limit() -> None:
    """On ONNX Runtime's grid, GPTQ's updates may grow a second code next to a row's peak: the
    codes are clipped back so that no two same-sign codes of a row exceed the pair limit."""
    model = _net()
    calib = _inputs(64, seed=1)
    grid = WeightGrid(8, per_channel=True, pair_limit=PAIR_LIMIT)
    rounded, report = gptq.gptq_weights(model, [calib[i : i + 16] for i in range(0, 64, 16)], grid)
    assert report["pair_limit"] == PAIR_LIMIT
    for name, w in rounded.items():
        layer = model.get_submodule(name)
        codes = (w / grid_step(layer, grid)).round().reshape(w.shape[0], -1)
        assert torch.allclose(codes * grid_step(layer, grid).reshape(-1, 1), w.reshape(w.shape[0], -1))
        if layer_reads_pairs(layer):
            assert max_pair_sums(codes.numpy()).max() <= PAIR_LIMIT, name
