"""Simulated (fake) quantisation of weights, in PyTorch: the grid the int8 runtimes use.

Symmetric, signed, ``2**(bits-1) - 1`` levels each side (int8: [-127, 127], as ONNX Runtime's
QDQ weights and the PT2E XNNPACK quantiser use), per tensor or per output channel. Used by the
depthwise analysis (weight SQNR, per-layer sensitivity), by bias correction (the expected weight
error) and to put float weights onto a 6- or 4-bit grid before an int8 export (W6A8 / W4A8).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

QUANT_LAYERS = (nn.Conv2d, nn.Linear)


def quantize_weight(
    weight: torch.Tensor, bits: int = 8, per_channel: bool = True, clip: str | None = None
) -> torch.Tensor:
    """Round ``weight`` onto the symmetric ``bits`` grid (axis 0 = output channels); returns floats.

    ``clip``: "max" puts the grid's end at max |w| (what the int8 runtimes' quantisers do, so it
    is the rule at 8 bits); "mse" picks, per tensor or channel, the end that minimises the squared
    rounding + clipping error (what low-bit quantisers do: at 6 or 4 bits one outlier weight
    otherwise coarsens the grid for all the others). Default: :func:`weight_clip` of ``bits``.
    """
    levels = 2 ** (bits - 1) - 1
    w = weight.detach()
    if per_channel:
        peak = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        peak = w.abs().amax()
    if (clip or weight_clip(bits)) == "mse":
        peak = _mse_peak(w, peak, levels, per_channel)
    scale = torch.clamp(peak, min=torch.finfo(w.dtype).tiny) / levels
    return torch.clamp(torch.round(w / scale), -levels, levels) * scale


def weight_clip(bits: int) -> str:
    """The weight-range rule at ``bits``: "max" at 8 bits and above (as the runtimes), "mse" below."""
    return "max" if bits >= 8 else "mse"


CLIP_FRACTIONS = torch.linspace(0.3, 1.0, 71)  # candidate grid ends, as fractions of max |w|


def _mse_peak(w: torch.Tensor, peak: torch.Tensor, levels: int, per_channel: bool) -> torch.Tensor:
    """The grid end (fraction of ``peak``) with the least squared error, per channel or per tensor."""
    dims = tuple(range(1, w.dim())) if per_channel else tuple(range(w.dim()))
    best_err = torch.full_like(peak, float("inf"))
    best = peak.clone()
    for fraction in CLIP_FRACTIONS:
        candidate = peak * fraction
        scale = torch.clamp(candidate, min=torch.finfo(w.dtype).tiny) / levels
        err = (torch.clamp(torch.round(w / scale), -levels, levels) * scale - w).pow(2)
        err = err.sum(dim=dims, keepdim=True) if per_channel else err.sum()
        better = err < best_err
        best = torch.where(better, candidate, best)
        best_err = torch.where(better, err, best_err)
    return best


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio, 10 log10(|ref|^2 / |ref - approx|^2), in dB."""
    signal = float(reference.double().pow(2).sum())
    noise = float((reference.double() - approx.double()).pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def quant_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The layers an int8 export quantises (convolutions and fully connected), in module order."""
    for name, module in model.named_modules():
        if isinstance(module, QUANT_LAYERS):
            yield name, module


@torch.no_grad()
def fake_quantize_weights_(model: nn.Module, bits: int, per_channel: bool = True) -> int:
    """Replace every conv/linear weight by its ``bits``-bit value, in place; returns the layer count.

    An int8 export of the result carries weights on the coarser grid (W6A8, W4A8): the int8
    quantiser sees the same per-channel peak, so it re-rounds each value by at most half an int8 step.
    """
    count = 0
    for _, module in quant_layers(model):
        module.weight.copy_(quantize_weight(module.weight, bits, per_channel))
        count += 1
    return count
