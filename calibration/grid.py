"""The integer grid int8 weights are stored on, and the pair limit that makes it exact on every CPU.

Symmetric, max rule: a row (an output channel, or the whole tensor) with peak ``p`` is stored as
codes ``round(w / s)`` with ``s = p / levels``, ``levels = 2**(bits-1) - 1`` (127 for int8).

The pair limit. ONNX Runtime's x86 int8 GEMMs without VNNI (AVX2, and AVX-512BW before Cascade
Lake) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds each two adjacent
products into a *saturating* int16: 255 x 127 x 2 = 64,770 > 32,767, so the same file computes
something else on an AMD EPYC with AVX2 than on a Xeon with VNNI or on ARM (docs/int8.md). The
sum of two products reaches at most 255 x (|q1| + |q2|), so no pair can saturate when every two
codes of the same sign in a row add up to at most 32,767 // 255 = 128. Which two weights the
kernel pairs depends on its packing, so the bound is kept for *any* two: a row's two largest
codes of each sign. Per row, :meth:`WeightGrid.levels` picks the most levels (up to 127) whose
nearest-rounded codes keep it; rows whose second weight is much smaller than the first keep
nearly 8 bits, rows with two equal peaks get 64 levels (7 bits).

Depthwise convolutions (one input channel per group, one output per group) run on kernels that
widen to 16/32 bits before multiplying (MLAS ``ConvSymDepthwise``, checked under emulation):
they keep the full grid. Everything else that reduces over two or more inputs reads pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT16_MAX = 32767
ACTIVATION_SPAN = 255  # uint8 activations (int8 ones are shifted by 128 into uint8 on x86)
PAIR_LIMIT = INT16_MAX // ACTIVATION_SPAN  # 128: 255 x 128 = 32,640 fits an int16


@dataclass(frozen=True)
class WeightGrid:
    """Symmetric ``bits`` grid, per output channel or per tensor; ``pair_limit`` (or None) caps
    the sum of any two same-sign codes of a row that reads pairs."""

    bits: int = 8
    per_channel: bool = True
    pair_limit: int | None = None

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def levels(self, rows: np.ndarray, reads_pairs: bool = True) -> np.ndarray:
        """Levels each side per row of ``rows`` ([channels, inputs]); equal for all rows per tensor."""
        rows = np.asarray(rows, np.float32)
        peaks = self.peaks(rows)
        if self.pair_limit is None or not reads_pairs or self.pair_limit >= 2 * self.qmax:
            return np.full(len(rows), self.qmax, np.int64)
        levels = pair_safe_levels(rows, peaks, self.qmax, self.pair_limit)
        return levels if self.per_channel else np.full(len(rows), levels.min(), np.int64)

    def peaks(self, rows: np.ndarray) -> np.ndarray:
        peaks = np.abs(rows).max(axis=1)
        return peaks if self.per_channel else np.full(len(rows), peaks.max(), np.float32)

    def steps(self, rows: np.ndarray, reads_pairs: bool = True) -> np.ndarray:
        """Per row, the float32 step ``peak / levels`` (a tiny positive step for an all-zero row)."""
        rows = np.asarray(rows, np.float32)
        peaks = np.maximum(self.peaks(rows), np.finfo(np.float32).tiny)
        return (peaks / self.levels(rows, reads_pairs).astype(np.float32)).astype(np.float32)

    def describe(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        pairs = f", same-sign pairs <= {self.pair_limit}" if self.pair_limit else ""
        return f"{self.bits}-bit {kind}{pairs}"


INT8_GRID = WeightGrid()  # 8-bit per channel, no pair limit: what LiteRT/XNNPACK files use


def pair_safe_levels(rows: np.ndarray, peaks: np.ndarray, qmax: int, limit: int) -> np.ndarray:
    """Per row, the largest ``q <= qmax`` whose codes ``round(w / (peak / q))`` keep the two
    largest codes of each sign within ``limit`` together (at q = limit // 2 any two do)."""
    top = np.stack([_two_largest(np.maximum(rows, 0)), _two_largest(np.maximum(-rows, 0))], axis=1)
    candidates = np.arange(qmax, limit // 2 - 1, -1, dtype=np.float32)  # descending
    steps = np.maximum(peaks, np.finfo(np.float32).tiny)[:, None] / candidates[None, :]  # [rows, q]
    codes = np.round(top[:, :, :, None] / steps[:, None, None, :])  # [rows, sign, 2, q]
    ok = (codes.sum(axis=2) <= limit).all(axis=1)  # [rows, q]; ok at limit // 2 by construction
    return candidates[ok.argmax(axis=1)].astype(np.int64)


def _two_largest(values: np.ndarray) -> np.ndarray:
    if values.shape[1] < 2:
        return np.concatenate([values, np.zeros_like(values)], axis=1)
    return -np.partition(-values, 1, axis=1)[:, :2]


def max_pair_sums(codes: np.ndarray) -> np.ndarray:
    """Per row of integer ``codes``, the largest sum of two same-sign magnitudes (the worst pair)."""
    codes = np.asarray(codes, np.int64)
    pos = _two_largest(np.maximum(codes, 0)).sum(axis=1)
    neg = _two_largest(np.maximum(-codes, 0)).sum(axis=1)
    return np.maximum(pos, neg)


def reads_pairs(weight_shape: tuple[int, ...], groups: int = 1) -> bool:
    """Whether a layer's int8 kernel reduces over input pairs: everything but a depthwise conv
    (one input channel per group and one output channel per group) and single-input rows."""
    outputs, inputs_per_row = weight_shape[0], int(np.prod(weight_shape[1:]))
    depthwise = len(weight_shape) == 4 and weight_shape[1] == 1 and groups == outputs and groups > 1
    return inputs_per_row > 1 and not depthwise
