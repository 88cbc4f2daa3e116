"""Exporters: one file per format behind a small registry.

Each exporter is ``export(module, example_input, out_path, **options) -> info`` where
``example_input`` is the NCHW float tensor the network takes and ``info`` is what the manifest
records about the written file (opset, ops, converter route...). The registry key is the
manifest's format name; ``--formats onnx,tflite`` selects exporters by ``family``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ExportError, UsageError


@dataclass(frozen=True)
class Exporter:
    fmt: str  # manifest format name, e.g. "tflite-fp16"
    family: str  # what --formats names: "onnx" or "tflite"
    filename: str
    precision: str
    layout: str  # the layout of the file's input tensor
    target: str  # "module:function", imported only when used (heavy converters)

    def load(self) -> Callable[..., dict[str, Any]]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


EXPORTERS: dict[str, Exporter] = {
    e.fmt: e
    for e in (
        Exporter("onnx-fp32", "onnx", "model.onnx", "fp32", "NCHW", "exporters.onnx:export"),
        Exporter("tflite-fp32", "tflite", "model_fp32.tflite", "fp32", "NHWC", "exporters.tflite:export"),
        Exporter(
            "tflite-fp16", "tflite", "model_fp16.tflite", "fp16", "NHWC", "exporters.tflite:export_fp16"
        ),
    )
}
FAMILIES = tuple(dict.fromkeys(e.family for e in EXPORTERS.values()))


def resolve(formats: list[str] | None) -> list[Exporter]:
    """``["onnx", "tflite"]`` (families or exact format names) -> exporters, in registry order."""
    wanted = formats or list(FAMILIES)
    unknown = [f for f in wanted if f not in FAMILIES and f not in EXPORTERS]
    if unknown:
        raise UsageError(f"unknown format {', '.join(unknown)}", f"use a comma list of {', '.join(FAMILIES)}")
    return [e for e in EXPORTERS.values() if e.family in wanted or e.fmt in wanted]


def export(
    fmt: str, module: Any, example_input: Any, out_path: str | os.PathLike[str], **options: Any
) -> dict[str, Any]:
    """Write ``module`` as format ``fmt`` to ``out_path``; returns the exporter's info."""
    return EXPORTERS[fmt].load()(module, example_input, Path(out_path), **options)


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Send fd 1 and 2 to a temp file for the block (converters print from C++ and rich).

    Yields a list that receives the captured text when the block ends, so that a failure can
    quote the converter's own message while a success keeps stdout clean for ``--json``.
    """
    sink: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


# Patterns converters use when an op has no lowering; the first capture group is the op.
_OP_PATTERNS = (
    r"(aten[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
    r"failed to legalize operation '([^']+)'",
    r"[Uu]nsupported (?:op|operator|operation)[^'\"`]*['\"`]([^'\"`]+)",
    r"'(tfl\.[a-z_0-9]+)' op",
)


def failing_op(text: str) -> str | None:
    """Best guess at the op a converter choked on, from its exception text and log."""
    for pattern in _OP_PATTERNS:
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


def conversion_error(fmt: str, exc: BaseException, log: str = "") -> ExportError:
    """An ExportError naming the failing op when the converter's message reveals it."""
    text = f"{exc}\n{log}"
    op = failing_op(text)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    where = f" at op {op}" if op else ""
    return ExportError(
        f"{fmt} conversion failed{where}: {first[:300]}",
        "rewrite that op in the model with a supported equivalent, or drop this format with --formats",
    )
