"""Activation range estimation from histograms: minmax, percentile, entropy (KL) and MSE.

Both quantisers use these functions on the same kind of input (a :class:`StreamingHistogram`
of a tensor's values, built in one pass over the calibration set): ONNX through
:func:`collect_ranges` (every tensor of the float graph from one ONNX Runtime pass), TFLite
through :func:`range_observer` (a PT2E observer). So a method name means the same clipping rule
in both files. The network's output keeps its maximum (``keep_top``): argmax lives there.

``mse`` is the default: it picks, per tensor, the clipping range whose expected squared error
(uniform rounding noise s²/12 inside, squared distance outside) is smallest. With the built-in
photographs as calibration data it is the estimator least thrown by out-of-domain outliers
(figures in docs/int8.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_METHOD = "mse"
BINS = 2048
PERCENTILE = 99.99
SUBSAMPLE = 1 << 21  # values per tensor and batch that enter a histogram (all of them at 224 px)


def select_range(
    hist: np.ndarray,
    lo: float,
    hi: float,
    method: str = DEFAULT_METHOD,
    levels: int = 256,
    symmetric: bool = False,
) -> tuple[float, float]:
    """The clipping range [lo', hi'] that ``method`` picks from a histogram over [lo, hi]."""
    hist = np.asarray(hist, dtype=np.float64)
    lo, hi = float(lo), float(hi)
    if method == "minmax" or not hi > lo or hist.sum() == 0:
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


# --- Streaming histograms: one pass over the calibration set ------------------------------------


class StreamingHistogram:
    """A histogram of every value seen, in one pass, with exact re-binning when the range grows.

    Bins sit on a fixed grid ``[k*width, (k+1)*width)``; when new values fall outside the
    ``bins`` held, the width doubles (pairs of bins merge exactly) until they fit. So the
    histogram never needs a first min/max pass. It holds 4 x ``BINS`` bins, of which at least
    ``BINS`` are occupied at the end; :meth:`edges` merges them down to ``BINS/2`` .. ``BINS``
    over the data's span, the resolution of a two-pass histogram.
    """

    def __init__(self, bins: int = 4 * BINS) -> None:
        self.bins = bins
        self.counts = np.zeros(bins)
        self.width = 0.0
        self.start = 0  # grid index of the first bin
        self.min = np.inf
        self.max = -np.inf

    def add(self, values: np.ndarray) -> None:
        # Memory order: a channel-last tensor (PT2E's observed graph) is read in place, not copied.
        values = np.asarray(values, dtype=np.float32).ravel(order="K")
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or inf: only the finite values count
            values = values[np.isfinite(values)]
            if values.size == 0:
                return
            lo, hi = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        values = _subsample(values)
        if self.width == 0.0:
            self.width = _grid_width(self.min, self.max, self.bins)
            self.start = int(np.floor(self.min / self.width))
        self._cover(self.min, self.max)
        # The bins are uniform: an index per value and bincount, ~6x faster than np.histogram,
        # which searches the edges again to settle boundary values (a few in 10^6 land one bin over).
        # float32 -> int32 first: without AVX-512 numpy casts float32 -> int64 one value at a time
        # (5-10x slower); the indices are the same (truncation, well inside int32).
        left, per_bin = np.float32(self.start * self.width), np.float32(1.0 / self.width)
        scaled = np.subtract(values, left)
        index = np.multiply(scaled, per_bin, out=scaled).astype(np.int32)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index.astype(np.intp), minlength=self.bins)

    def _cover(self, lo: float, hi: float) -> None:
        """Widen the bins (merging pairs) and shift the window until [lo, hi] fits."""
        while True:
            first, last = int(np.floor(lo / self.width)), int(np.floor(hi / self.width))
            if last - first < self.bins:
                break
            index = self.start + np.arange(self.bins)
            self.width *= 2.0
            self.start = int(np.floor(self.start / 2))
            merged = np.zeros(self.bins)
            np.add.at(merged, index // 2 - self.start, self.counts)
            self.counts = merged
        # Shift the window so that it starts at or below ``first`` and still holds every count.
        shift = min(first - self.start, 0) or max(last - (self.start + self.bins - 1), 0)
        if shift:
            self.counts = np.roll(self.counts, -shift)
            self.start += shift

    def edges(self, bins: int = BINS) -> tuple[np.ndarray, float, float]:
        """The occupied bins, merged by an integer factor to at most ``bins``, and their outer edges."""
        nonzero = np.flatnonzero(self.counts)
        if nonzero.size == 0:
            return np.zeros(1), 0.0, 0.0
        first, last = int(nonzero[0]), int(nonzero[-1])
        counts = self.counts[first : last + 1]
        factor = -(-len(counts) // bins)
        counts = np.pad(counts, (0, -len(counts) % factor)).reshape(-1, factor).sum(1)
        left = (self.start + first) * self.width
        return counts, left, left + len(counts) * factor * self.width

    def select(
        self, method: str = DEFAULT_METHOD, levels: int = 256, symmetric: bool = False, keep_top: bool = False
    ) -> tuple[float, float]:
        """The clipping range ``method`` picks; ``keep_top`` (network outputs) keeps the maximum.

        Argmax lives in the largest logits: two classes clipped to the same maximum tie. The
        bottom stays the method's (raising it to 0 helped argmax by 0.8 % on float logits but
        saturated every negative logit: cosine 0.98 -> 0.76, softmax distorted; docs/int8.md).
        """
        if not np.isfinite(self.min):
            return 0.0, 0.0
        hist, left, right = self.edges()
        if method == "minmax":
            left, right = self.min, self.max
        lo, hi = select_range(hist, left, right, method, levels, symmetric)
        lo, hi = max(lo, min(self.min, 0.0)), min(hi, max(self.max, 0.0))  # never wider than the data
        if keep_top:
            hi = max(hi, self.max)
            if symmetric:
                lo = -hi
        return lo, hi


def _subsample(values: np.ndarray, cap: int = SUBSAMPLE) -> np.ndarray:
    """Every p-th value (p prime, so it walks through every channel of an NCHW/NHWC tensor).

    The histogram's shape needs far fewer than the ~10^6 values of an early feature map per
    image; min and max are taken before, exactly. Bounds the histogram time of huge feature maps.
    """
    if values.size <= cap:
        return values
    step = next(p for p in range(max(-(-values.size // cap), 11), 10 * values.size) if _is_prime(p))
    return values[::step]


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def _grid_width(lo: float, hi: float, bins: int) -> float:
    """First bin width: the batch spans half the bins; never below the float32 resolution there.

    Randomly initialised networks have activations around 1e-8..1e-11 whose spread may be a
    few ulps (or none): the floor keeps ``bins`` distinct, finite edges (np.histogram refuses
    "too many bins for data range" otherwise).
    """
    magnitude = max(abs(lo), abs(hi))
    floor = max(magnitude * 64 * float(np.finfo(np.float32).eps), float(np.finfo(np.float32).tiny))
    return max((hi - lo) / (bins // 2), floor)


def collect_ranges(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    batches: Iterable[np.ndarray],
    method: str = DEFAULT_METHOD,
    symmetric: bool = False,
    outputs: Iterable[str] = (),
) -> dict[str, tuple[float, float]]:
    """Ranges of every tensor ``run(batch) -> {name: values}`` returns, in one pass over ``batches``.

    ``outputs`` name the network's outputs (the logits): their top is never clipped, since
    argmax lives in the largest values — clipping two classes to the same maximum makes a tie.
    """
    keep = set(outputs)
    hists: dict[str, StreamingHistogram] = {}
    for batch in batches:
        for name, value in run(batch).items():
            hists.setdefault(name, StreamingHistogram()).add(value)
    return {name: h.select(method, 256, symmetric, keep_top=name in keep) for name, h in hists.items()}


# --- TFLite: the same estimators inside a PT2E observer -----------------------------------------


def range_observer(method: str) -> Any:
    """A torchao MinMaxObserver subclass that also keeps a :class:`StreamingHistogram`.

    Its qparams come from :meth:`StreamingHistogram.select` with ``method``: the same rule and
    the same histogram code as the ONNX file, at the cost of one histogram per call (torchao's
    HistogramObserver re-bins with upsampling on every call and made calibration ~10x slower).
    Call ``mark_output()`` on the observer of the network output, before calibration.
    """
    import torch
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class RangeObserver(MinMaxObserver):
        range_method = method

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.histogram = StreamingHistogram()
            self.keep_top = False

        def mark_output(self) -> None:
            """This observer sees a network output: keep its maximum (see StreamingHistogram.select)."""
            self.keep_top = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.numel():  # the histogram keeps min/max too: no second reduction (torch.aminmax)
                self.histogram.add(x.detach().float().numpy())
                self.min_val.fill_(self.histogram.min)
                self.max_val.fill_(self.histogram.max)
            return x

        def picked_range(self) -> tuple[float, float]:
            symmetric = self.qscheme == torch.per_tensor_symmetric
            return self.histogram.select(
                self.range_method, self.quant_max - self.quant_min + 1, symmetric, keep_top=self.keep_top
            )

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            lo, hi = self.picked_range()
            return self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))

    RangeObserver.__name__ = f"RangeObserver_{method}"
    return RangeObserver
