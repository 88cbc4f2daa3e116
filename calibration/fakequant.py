"""Simulated (fake) quantisation of weights, in PyTorch: the grid the int8 runtimes use.

Symmetric, signed, ``2**(bits-1) - 1`` levels each side (int8: [-127, 127], as ONNX Runtime's
QDQ weights and the PT2E XNNPACK quantiser use), per tensor or per output channel, optionally
with the pair limit that keeps ONNX Runtime's x86 kernels exact (:mod:`calibration.grid`). Used
by the depthwise analysis (weight SQNR, per-layer sensitivity), by bias correction and GPTQ (the
grid each file's weights will be rounded onto) and to put float weights onto a 6- or 4-bit grid
before an int8 export (W6A8 / W4A8).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from calibration.grid import WeightGrid, reads_pairs

QUANT_LAYERS = (nn.Conv2d, nn.Linear)


def _rows(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().reshape(weight.shape[0], -1).float().cpu().numpy()


def layer_reads_pairs(module: nn.Module) -> bool:
    """Whether the layer's int8 kernel reduces over input pairs (everything but depthwise)."""
    return reads_pairs(tuple(module.weight.shape), getattr(module, "groups", 1))


def grid_levels(module: nn.Module, grid: WeightGrid) -> torch.Tensor:
    """Levels each side per output channel, shaped to broadcast against the weight."""
    levels = grid.levels(_rows(module.weight), layer_reads_pairs(module))
    return torch.from_numpy(levels).reshape(-1, *([1] * (module.weight.dim() - 1)))


def grid_step(module: nn.Module, grid: WeightGrid) -> torch.Tensor:
    """The float32 step per output channel (``peak / levels``), broadcastable against the weight."""
    steps = grid.steps(_rows(module.weight), layer_reads_pairs(module))
    return torch.from_numpy(steps).to(module.weight.dtype).reshape(-1, *([1] * (module.weight.dim() - 1)))


def grid_weight(module: nn.Module, grid: WeightGrid) -> torch.Tensor:
    """The layer's weight rounded onto ``grid`` (floats)."""
    levels = grid_levels(module, grid).to(module.weight.dtype)
    step = grid_step(module, grid)
    return torch.clamp(torch.round(module.weight.detach() / step), -levels, levels) * step


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


def levels_by_weight(model: nn.Module, grid: WeightGrid) -> dict[str, list[int]]:
    """{"<layer>.weight": levels per output channel}: the grid a quantiser must reproduce, keyed by
    the parameter names the ONNX exporter gives the weights."""
    return {f"{name}.weight": grid_levels(m, grid).flatten().tolist() for name, m in quant_layers(model)}


@torch.no_grad()
def fake_quantize_weights_(model: nn.Module, grid: WeightGrid) -> int:
    """Replace every conv/linear weight by its value on ``grid``, in place; returns the layer count.

    An int8 export of the result carries weights on the coarser grid (W6A8, W4A8): the ONNX file
    keeps exactly those codes (the export passes the grid's levels on), LiteRT's quantiser sees the
    same per-channel peak and re-rounds each value by at most half an int8 step.
    """
    count = 0
    for _, module in quant_layers(model):
        module.weight.copy_(grid_weight(module, grid))
        count += 1
    return count
