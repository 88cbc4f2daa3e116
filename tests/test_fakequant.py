"""calibration.fakequant: the weight grids, and the clipping rule below 8 bits."""

from __future__ import annotations

import pytest
import torch

from calibration.fakequant import quantize_weight, sqnr_db, weight_clip


def _weights_with_an_outlier() -> torch.Tensor:
    w = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    w[0, 0, 0, 0] = 20.0  # one weight 5x beyond the rest sets the max-|w| grid for everyone
    return w


def test_eight_bits_follow_the_runtimes_max_rule() -> None:
    w = _weights_with_an_outlier()
    assert weight_clip(8) == "max"
    q = quantize_weight(w, 8, per_channel=True)
    assert torch.equal(q, quantize_weight(w, 8, per_channel=True, clip="max"))
    # The largest weight of every channel is on the grid exactly (scale = max|w| / 127).
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)), rtol=1e-6)
    assert set(torch.unique(torch.round(q[1] / (w[1].abs().max() / 127))).tolist()) <= set(range(-127, 128))


@pytest.mark.parametrize("bits", [6, 4])
def test_low_bits_clip_by_mse(bits: int) -> None:
    w = _weights_with_an_outlier()
    assert weight_clip(bits) == "mse"
    by_max = sqnr_db(w, quantize_weight(w, bits, per_channel=False, clip="max"))
    by_mse = sqnr_db(w, quantize_weight(w, bits, per_channel=False))
    # Measured 14.8 -> 18.9 dB (6 bits) and 2.3 -> 11.6 dB (4 bits) on this tensor.
    assert by_mse > by_max + 3.0
    levels = 2 ** (bits - 1) - 1
    q = quantize_weight(w, bits, per_channel=False)
    assert len(torch.unique(q)) <= 2 * levels + 1
    assert float(q.abs().max()) < 20.0  # the outlier is clipped
