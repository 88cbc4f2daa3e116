"""Activation range estimation from histograms: minmax, percentile, entropy (KL) and MSE.

Both quantisers use these functions on the same kind of input (a histogram of a tensor's values
over the calibration set): ONNX through :func:`onnx_activation_ranges` (its own histograms, two
passes over ONNX Runtime), TFLite through :class:`RangeObserver` (a PT2E observer). So a method
name means the same clipping rule in both files.

``mse`` is the default: it picks, per tensor, the clipping range whose expected squared error
(uniform rounding noise s²/12 inside, squared distance outside) is smallest. With the built-in
photographs as calibration data it is the estimator least thrown by out-of-domain outliers
(figures in docs/int8.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_METHOD = "mse"
BINS = 2048
PERCENTILE = 99.99


def select_range(hist: np.ndarray, lo: float, hi: float, method: str = DEFAULT_METHOD,
                 levels: int = 256, symmetric: bool = False) -> tuple[float, float]:
    """The clipping range [lo', hi'] that ``method`` picks from a histogram over [lo, hi]."""
    hist = np.asarray(hist, dtype=np.float64)
    lo, hi = float(lo), float(hi)
    if method == "minmax" or hi - lo <= 0 or hist.sum() == 0:
        picked = lo, hi
    elif method == "percentile":
        picked = _percentile(hist, lo, hi, PERCENTILE)
    elif method == "entropy":
        picked = _entropy(hist, lo, hi, levels)
    elif method == "mse":
        picked = _mse(hist, lo, hi, levels, symmetric)
    else:
        raise ValueError(f"unknown range method {method!r}; use one of {', '.join(METHODS)}")
    new_lo, new_hi = min(picked[0], 0.0), max(picked[1], 0.0)  # zero must stay representable
    if symmetric:
        bound = max(-new_lo, new_hi)
        return -bound, bound
    return new_lo, new_hi


def _centres(lo: float, hi: float, bins: int) -> np.ndarray:
    width = (hi - lo) / bins
    return lo + width * (np.arange(bins) + 0.5)


def _percentile(hist: np.ndarray, lo: float, hi: float, pct: float) -> tuple[float, float]:
    cdf = np.cumsum(hist) / hist.sum()
    edges = np.linspace(lo, hi, len(hist) + 1)
    tail = 1.0 - pct / 100.0
    new_lo = edges[np.searchsorted(cdf, tail, side="left")] if lo < 0 else lo
    new_hi = edges[min(len(hist), np.searchsorted(cdf, 1.0 - tail, side="left") + 1)]
    return min(float(new_lo), 0.0), max(float(new_hi), 0.0)


def _mse(hist: np.ndarray, lo: float, hi: float, levels: int, symmetric: bool) -> tuple[float, float]:
    """Grid search over clipping ranges minimising the expected quantisation MSE (O(1) per candidate)."""
    x = _centres(lo, hi, len(hist))
    # Prefix sums of n, n*x, n*x^2 give the clipping error of any tail in constant time.
    c0 = np.concatenate([[0.0], np.cumsum(hist)])
    c1 = np.concatenate([[0.0], np.cumsum(hist * x)])
    c2 = np.concatenate([[0.0], np.cumsum(hist * x * x)])
    fractions = np.linspace(0.02, 1.0, 200)
    if symmetric:
        bound = max(-lo, hi, 0.0) * fractions
        cand_lo, cand_hi = -bound, bound
    else:
        # Signed tensors: a 2-D grid over both ends; non-negative ones only move the top.
        lows = lo * fractions[::4] if lo < 0 else np.zeros(1)
        cand_lo, cand_hi = (g.ravel() for g in np.meshgrid(lows, hi * fractions))
    scale = np.maximum(cand_hi - np.minimum(cand_lo, 0.0), 1e-12) / (levels - 1)
    i_lo = np.searchsorted(x, cand_lo, side="left")  # bins below cand_lo: [0, i_lo)
    i_hi = np.searchsorted(x, cand_hi, side="right")  # bins above cand_hi: [i_hi, bins)
    below = c2[i_lo] - 2 * cand_lo * c1[i_lo] + cand_lo**2 * c0[i_lo]
    above = (c2[-1] - c2[i_hi]) - 2 * cand_hi * (c1[-1] - c1[i_hi]) + cand_hi**2 * (c0[-1] - c0[i_hi])
    inside = (c0[i_hi] - c0[i_lo]) * scale**2 / 12.0
    best = int(np.argmin(below + above + inside))
    return float(cand_lo[best]), float(cand_hi[best])


def _entropy(hist: np.ndarray, lo: float, hi: float, levels: int) -> tuple[float, float]:
    """KL-divergence threshold (TensorRT's calibration) on the magnitude histogram."""
    x = _centres(lo, hi, len(hist))
    bound = max(-lo, hi)
    mag, _ = np.histogram(np.abs(x), bins=len(hist), range=(0.0, bound), weights=hist)
    signed = lo < 0 < hi and hist[x < 0].sum() > 0.01 * hist.sum()
    if not signed:
        mag[0] = 0.0  # ReLU's exact zeros are representable anyway; their spike would win the KL
    quant_bins = levels // 2 if signed else levels
    best_t, best_kl = len(mag), np.inf
    for t in range(quant_bins, len(mag) + 1, 8):
        ref = mag[:t].copy()
        ref[-1] += mag[t:].sum()  # clipped values pile up in the last bin
        if ref.sum() == 0:
            continue
        # The quantised view: the t unclipped bins merged into quant_bins, each spread back
        # evenly over its non-empty source bins.
        cand = np.zeros(t)
        for g in np.array_split(np.arange(t), quant_bins):
            nonzero = mag[g] > 0
            if nonzero.any():
                cand[g[nonzero]] = mag[g].sum() / nonzero.sum()
        p, q = ref / ref.sum(), cand / max(cand.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_t, best_kl = t, kl
    threshold = best_t * bound / len(mag)
    return max(lo, -threshold), min(hi, threshold)


# --- ONNX: histograms of every tensor over ONNX Runtime -----------------------------------------


def onnx_activation_ranges(run: Callable[[np.ndarray], dict[str, np.ndarray]],
                           batches: Iterable[np.ndarray], method: str = DEFAULT_METHOD,
                           symmetric: bool = False) -> dict[str, tuple[float, float]]:
    """Ranges of every tensor ``run`` returns, from two passes: min/max, then fixed-edge histograms.

    ``run(batch) -> {tensor name: values}``; ``batches`` is iterated twice (pass a list).
    """
    batches = list(batches)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for batch in batches:
        for name, value in run(batch).items():
            lo[name] = min(lo.get(name, np.inf), float(value.min()))
            hi[name] = max(hi.get(name, -np.inf), float(value.max()))
    hists = {name: np.zeros(BINS) for name in lo}
    for batch in batches:
        for name, value in run(batch).items():
            if hi[name] > lo[name]:
                hists[name] += np.histogram(value, bins=BINS, range=(lo[name], hi[name]))[0]
    return {name: select_range(hists[name], lo[name], hi[name], method, 256, symmetric) for name in lo}


# --- TFLite: the same estimators inside a PT2E observer -----------------------------------------


def range_observer(method: str) -> Any:
    """A torchao HistogramObserver subclass whose range search is :func:`select_range` with ``method``."""
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver

    class RangeObserver(HistogramObserver):
        range_method = method

        def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
            symmetric = self.qscheme == torch.per_tensor_symmetric
            lo, hi = select_range(self.histogram.double().numpy(), self.min_val.item(), self.max_val.item(),
                                  self.range_method, levels=self.quant_max - self.quant_min + 1,
                                  symmetric=symmetric)
            return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)

    RangeObserver.__name__ = f"RangeObserver_{method}"
    return RangeObserver
