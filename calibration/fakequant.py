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


def weight_scale(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """The step of the symmetric ``bits`` grid (max rule), broadcastable against ``weight``."""
    w = weight.detach()
    if per_channel:
        peak = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        peak = w.abs().amax()
    return torch.clamp(peak, min=torch.finfo(w.dtype).tiny) / (2 ** (bits - 1) - 1)


def quantize_weight(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Round ``weight`` onto the symmetric ``bits`` grid (axis 0 = output channels); returns floats."""
    levels = 2 ** (bits - 1) - 1
    scale = weight_scale(weight, bits, per_channel)
    return torch.clamp(torch.round(weight.detach() / scale), -levels, levels) * scale


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
