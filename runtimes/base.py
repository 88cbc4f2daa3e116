"""The engine interface: a :class:`Runtime` loads a model file into a :class:`Session`.

A session takes float32 input in the artifact's own layout (NCHW for torch/ONNX, NHWC for
TFLite) and returns float32 logits; int8/uint8 model I/O is quantised and dequantised inside,
with the file's scale and zero point. ``prepare`` + ``invoke`` split that path so a benchmark
times only the engine call, never the conversion.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class Runtime:
    """One inference engine. Subclasses set ``name``/``suffixes`` and implement the three methods."""

    name: str = ""
    suffixes: tuple[str, ...] = ()  # file suffixes it loads, e.g. (".onnx",)

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, what to install)``; never raises."""
        raise NotImplementedError

    def version(self) -> str | None:
        raise NotImplementedError

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> Session:
        raise NotImplementedError

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
