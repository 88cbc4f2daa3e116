"""The engine interface: a :class:`Runtime` loads a model file into a :class:`Session`.

A session takes float32 input in the artifact's own layout (NCHW for torch/ONNX, NHWC for
TFLite) and returns float32 logits; int8/uint8 model I/O is quantised and dequantised inside,
with the file's scale and zero point. ``prepare`` + ``invoke`` split that path so a benchmark
times only the engine call, never the conversion.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Op categories every engine's profile reports in (the report's time-share plot uses them).
CATEGORIES = (
    "conv",
    "depthwise",
    "pointwise",
    "element-wise",
    "pooling",
    "reshape/transpose",
    "quantise/dequantise",
    "other",
)


class Runtime:
    """One inference engine. Subclasses set ``name``/``suffixes`` and implement the three methods."""

    name: str = ""
    suffixes: tuple[str, ...] = ()  # file suffixes it loads, e.g. (".onnx",)
    accelerator: str = ""  # what executes the ops by default, e.g. "XNNPACK"

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, what to install)``; never raises."""
        raise NotImplementedError

    def version(self) -> str | None:
        raise NotImplementedError

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> Session:
        raise NotImplementedError

    def profile(
        self, path: str | os.PathLike[str], threads: int, native: Any, runs: int, precision: str
    ) -> dict[str, Any] | None:
        """Where the time goes (per op category) and the ops off the fast path; None if the engine
        has no profiler. ``native`` is a prepared input (``Session.prepare``)."""
        return None

    def slow_path(self, path: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
        """An int8 file's ops that run outside the engine's int8 fast path, read from the graph it
        executes (no timing); None when the engine cannot tell."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Session:
    """A loaded model. Subclasses fill ``input``/``output`` (tensor info dicts) and the hooks."""

    runtime: str = ""
    layout: str = "NCHW"

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        self.path = str(path)
        self.threads = threads
        # {name, shape, dtype, scale, zero_point}; a None batch dimension means dynamic.
        self.input: dict[str, Any] = {}
        self.output: dict[str, Any] = {}

    # -- the timed path --------------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> Any:
        """Float32 batch in the artifact's layout -> the engine's native input (quantised if int8)."""
        raise NotImplementedError

    def invoke(self, native: Any) -> Any:
        """One engine call on prepared input; returns the raw output (what ``finish`` takes)."""
        raise NotImplementedError

    def finish(self, raw: Any) -> np.ndarray:
        """Raw output -> float32 logits (dequantised if int8), shape (batch, classes)."""
        out = np.asarray(raw)
        out = dequantize(out, self.output.get("scale"), self.output.get("zero_point"))
        return out.reshape(out.shape[0], -1)

    # -- convenience -----------------------------------------------------------------------
    def run(self, x: np.ndarray) -> np.ndarray:
        """Any batch size: loops over samples when the file has a static batch of 1."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        batch = (self.input.get("shape") or [None])[0]
        if batch is not None and x.shape[0] != batch:
            if batch != 1:
                raise ValueError(f"{self.path} has a static batch of {batch}, got {x.shape[0]}")
            return np.concatenate(
                [self.finish(self.invoke(self.prepare(x[i : i + 1]))) for i in range(len(x))]
            )
        return self.finish(self.invoke(self.prepare(x)))

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "version": None,
            "threads": self.threads,
            "path": self.path,
            "layout": self.layout,
            "input": dict(self.input),
            "output": dict(self.output),
        }


def quantize(x: np.ndarray, scale: float | None, zero_point: int | None, dtype: Any) -> np.ndarray:
    """Float -> integer ``dtype`` with round-half-to-even and saturation, as the runtimes do."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    if not scale:
        raise ValueError(f"an {dtype} input needs a quantisation scale")
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale)) + (zero_point or 0)
    return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(dtype))


def dequantize(q: np.ndarray, scale: float | None, zero_point: int | None) -> np.ndarray:
    if q.dtype.kind == "f":
        return q.astype(np.float32, copy=False)
    if not scale:
        raise ValueError(f"an {q.dtype} output needs a quantisation scale")
    return ((q.astype(np.float32) - (zero_point or 0)) * np.float32(scale)).astype(np.float32)


def tensor_info(
    name: str, shape: Any, dtype: Any, scale: float | None = None, zero_point: int | None = None
) -> dict[str, Any]:
    """The ``input``/``output`` dict of a session (JSON-friendly)."""
    dims = [int(d) if isinstance(d, int | np.integer) and d >= 0 else None for d in shape]
    return {
        "name": name,
        "shape": dims,
        "dtype": np.dtype(dtype).name,
        "scale": None if scale is None else float(scale),
        "zero_point": None if zero_point is None else int(zero_point),
    }


def conv_kind(group: int, weight_shape: list[int] | None, nhwc: bool) -> str:
    """depthwise (one input channel per group), pointwise (1x1, ungrouped) or conv (the rest)."""
    if not weight_shape or len(weight_shape) != 4:
        return "conv"
    kh, kw, per_group = (
        (weight_shape[1], weight_shape[2], weight_shape[3])
        if nhwc
        else (weight_shape[2], weight_shape[3], weight_shape[1])
    )
    if group > 1 and per_group == 1:
        return "depthwise"
    return "pointwise" if (kh, kw) == (1, 1) and group == 1 else "conv"


def shares(per_category: dict[str, float]) -> dict[str, Any]:
    total = sum(per_category.values())
    ms = {c: round(per_category.get(c, 0.0), 4) for c in CATEGORIES if per_category.get(c)}
    share = {c: round(v / total, 4) for c, v in ms.items()} if total else {}
    return {"total_ms": round(total, 4), "by_category_ms": ms, "share": share}


def time_calls(call: Callable[[], Any], runs: int) -> list[float]:
    """Milliseconds of ``runs`` calls of ``call``, each timed alone (``time.perf_counter_ns``):
    the one timing loop of the benchmark, the profiles and the peak measurement."""
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def p50(call: Callable[[], Any], warmup: int, runs: int) -> float:
    """Median milliseconds of ``runs`` calls after ``warmup`` untimed ones."""
    time_calls(call, warmup)
    return round(statistics.median(time_calls(call, runs)), 4)
