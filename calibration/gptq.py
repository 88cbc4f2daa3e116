"""Weight rounding that minimises each layer's output error on calibration data (GPTQ).

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (https://arxiv.org/abs/2210.17323), after Optimal Brain Quantization (Frantar &
Alistarh 2022, https://arxiv.org/abs/2208.11580), applied to convolutions through their im2col
inputs. Rounding every weight to the nearest grid point is optimal for the weights but not for the
layer's output: the errors of weights that read correlated inputs add up. GPTQ rounds one input
column at a time and moves the columns not yet rounded so that the layer's output on the
calibration inputs changes least, with H = X X^T (X: the layer's inputs) as the metric:

    q_i = round(w_i);  W[:, i+1:] -= (w_i - q_i) / U_ii * U_i,i+1:   (U: Cholesky factor of H^-1)

The grid (:class:`calibration.grid.WeightGrid`: symmetric, max rule, per tensor or per output
channel, with or without the pair limit) is the one the file's quantiser uses, so the rounded
weights reach the files unchanged (8 bits) or are the W6A8/W4A8 values. Under a pair limit the
codes GPTQ moved are clipped back so that no two same-sign codes of a row exceed it. Grouped and
depthwise convolutions get one H per group.

    gptq_weights(model, calib_batches, grid=WeightGrid()) -> (weights, report)
        For a BN-folded float model (left unchanged): {layer name: rounded weight} and
        {"layers", "weight_bits", "per_channel", "error_ratio_median", "error_ratio_max"}, the
        ratio being, per layer, the output error tr(E H E^T) (E: the weight error) after GPTQ over
        that of nearest rounding. Bias correction takes the weights as its grid, then the caller
        writes them into the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from calibration.fakequant import grid_levels, grid_step, layer_reads_pairs, quant_layers
from calibration.grid import INT8_GRID, WeightGrid

DAMP = 0.01  # of the mean diagonal of H, as in GPTQ: keeps H^-1 defined for inputs that never vary
COLUMN_BUDGET = 2e7  # unfolded input values held at once (x8 bytes in float64)


def supported(module: nn.Module) -> bool:
    """Linear layers and convolutions with explicit zero padding (what im2col reproduces)."""
    if isinstance(module, nn.Linear):
        return True
    return getattr(module, "padding_mode", None) == "zeros" and not isinstance(module.padding, str)


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as columns per group: [groups, d, N] (d = inputs one output reads)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # [B, C*k*k, L]
    g = module.groups
    cols = cols.reshape(cols.shape[0], g, -1, cols.shape[-1])
    return cols.permute(1, 2, 0, 3).reshape(g, cols.shape[2], -1)


def _columns_per_image(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return x[:1].numel()
    return x.shape[1] * math.prod(module.kernel_size) * out.shape[-2] * out.shape[-1]


def _weights(module: nn.Module) -> torch.Tensor:
    """[groups, out per group, d], the column order of :func:`_columns`."""
    w = module.weight.detach()
    g = getattr(module, "groups", 1)
    return w.reshape(g, w.shape[0] // g, -1).double()


@torch.no_grad()
def _hessians(model: nn.Module, layers: list[nn.Module], batches: Iterable[Any]) -> dict[int, torch.Tensor]:
    hessians: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = inputs[0].detach()
        # A few images at a time: the unfolded inputs of a 3x3 conv are 9x the activation.
        chunk = max(1, int(COLUMN_BUDGET // _columns_per_image(module, x, out)))
        for i in range(0, x.shape[0], chunk):
            cols = _columns(module, x[i : i + chunk]).double()
            h = cols @ cols.transpose(1, 2)
            hessians[id(module)] = hessians[id(module)] + h if id(module) in hessians else h

    handles = [m.register_forward_hook(record) for m in layers]
    try:
        for batch in batches:
            model(torch.as_tensor(np.asarray(batch, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    return hessians


def _error(e: torch.Tensor, h: torch.Tensor) -> float:
    return float(torch.einsum("god,gde,goe->", e, h, e))


def _round_layer(
    w: torch.Tensor,
    h: torch.Tensor,
    step: torch.Tensor,
    levels: torch.Tensor,
    per_channel: bool,
    pair_limit: int | None,
) -> tuple[torch.Tensor, float]:
    """GPTQ on one layer ([groups, out, d] weights; ``step`` and ``levels`` per row, [groups, out, 1]):
    the integer codes, and their output error over nearest rounding's."""
    nearest = torch.clamp(torch.round(w / step), -levels, levels)
    codes = _keep_peak(_gptq(w, h, step, levels), w, levels, per_channel)
    if pair_limit is not None:
        codes = _limit_pairs(codes, pair_limit)
    base = _error(w - nearest * step, h)
    return codes, (_error(w - codes * step, h) / base if base > 0 else 1.0)


def _gptq(w: torch.Tensor, h: torch.Tensor, step: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    d = w.shape[2]
    diag = torch.diagonal(h, dim1=1, dim2=2)
    damp = DAMP * diag.mean(dim=1).clamp(min=1e-12)
    h = h + damp[:, None, None] * torch.eye(d, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    step, levels = step[:, :, 0], levels[:, :, 0]
    work = w.clone()
    codes = torch.empty_like(w)
    for i in range(d):
        codes[:, :, i] = torch.clamp(torch.round(work[:, :, i] / step), -levels, levels)
        err = (work[:, :, i] - codes[:, :, i] * step) / u[:, i, i][:, None]
        work[:, :, i + 1 :] -= err[:, :, None] * u[:, None, i, i + 1 :]
    return codes


def _keep_peak(codes: torch.Tensor, w: torch.Tensor, levels: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Put each grid's largest weight back on its outermost level where the updates moved it
    inwards: the quantisers derive the grid from the peak, and a smaller one would re-round all."""
    rows = w.shape[0] * w.shape[1] if per_channel else 1
    flat_w, flat_c = w.reshape(rows, -1), codes.clone().reshape(rows, -1)
    top = levels.reshape(-1) if per_channel else levels.reshape(-1)[:1]
    idx, at = flat_w.abs().argmax(dim=1), torch.arange(rows)
    peak = flat_w[at, idx]
    flat_c[at, idx] = torch.where(peak != 0, torch.sign(peak) * top, flat_c[at, idx])
    return flat_c.reshape(codes.shape)


def _limit_pairs(codes: torch.Tensor, limit: int) -> torch.Tensor:
    """Clip every code but each sign's largest so that no two same-sign codes of a row add up to
    more than ``limit`` (GPTQ's updates may have grown a second code next to the peak)."""
    flat = codes.reshape(-1, codes.shape[-1]).clone()
    at = torch.arange(len(flat))
    for sign in (1.0, -1.0):
        mags = torch.clamp(flat * sign, min=0)
        top, idx = mags.max(dim=1)
        room = (limit - top).clamp(min=0)[:, None]
        clipped = torch.minimum(mags, room)
        clipped[at, idx] = top
        flat = torch.where(flat * sign > 0, sign * clipped, flat)
    return flat.reshape(codes.shape)


@torch.no_grad()
def gptq_weights(
    model: nn.Module, calib_batches: Iterable[Any], grid: WeightGrid = INT8_GRID
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every conv/linear weight rounded onto its ``grid`` by GPTQ (module doc)."""
    layers = [(n, m) for n, m in quant_layers(model) if supported(m)]
    hessians = _hessians(model, [m for _, m in layers], calib_batches)
    rounded, ratios = {}, []
    for name, m in layers:
        if id(m) not in hessians:
            continue  # not reached by the forward pass
        w = _weights(m)
        step = grid_step(m, grid)  # float32, as the quantiser computes it
        shape = (w.shape[0], w.shape[1], 1)
        levels = grid_levels(m, grid).to(w.dtype).reshape(shape)
        limit = grid.pair_limit if layer_reads_pairs(m) else None
        codes, ratio = _round_layer(
            w, hessians[id(m)], step.double().reshape(shape), levels, grid.per_channel, limit
        )
        rounded[name] = codes.reshape(m.weight.shape).to(m.weight.dtype) * step
        ratios.append(ratio)
    return rounded, {
        "layers": len(ratios),
        "weight_bits": grid.bits,
        "per_channel": grid.per_channel,
        "pair_limit": grid.pair_limit,
        "error_ratio_median": float(np.median(ratios)) if ratios else None,
        "error_ratio_max": float(max(ratios)) if ratios else None,
    }
