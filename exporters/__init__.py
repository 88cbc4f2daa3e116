"""Exporters: one file per format behind a small registry.

Each exporter is ``export(module, example_input, out_path, **options) -> info`` where
``example_input`` is the NCHW float tensor the network takes and ``info`` is what the manifest
records about the written file (opset, ops, converter route...). The registry key is the
manifest's format name; ``--formats onnx,tflite`` selects exporters by ``family``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ExportError, RuntimeUnavailableError, UsageError


@dataclass(frozen=True)
class Exporter:
    fmt: str  # manifest format name, e.g. "tflite-fp16"
    family: str  # what --formats names: "onnx" or "tflite"
    filename: str
    precision: str
    layout: str  # the layout of the file's input tensor
    target: str  # "module:function", imported only when used (heavy converters)
    requires: tuple[str, ...] = ()  # (import name, pip requirement) pairs' import names

    def load(self) -> Callable[..., dict[str, Any]]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)

    def missing(self) -> list[str]:
        """The packages this exporter needs that are not installed (checked without importing)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


EXPORTERS: dict[str, Exporter] = {
    e.fmt: e
    for e in (
        Exporter(
            "onnx-fp32", "onnx", "model.onnx", "fp32", "NCHW", "exporters.onnx:export", ("onnx", "onnxslim")
        ),
        Exporter(
            "tflite-fp32",
            "tflite",
            "model_fp32.tflite",
            "fp32",
            "NHWC",
            "exporters.tflite:export",
            ("litert_torch", "ai_edge_litert"),
        ),
        Exporter(
            "tflite-fp16",
            "tflite",
            "model_fp16.tflite",
            "fp16",
            "NHWC",
            "exporters.tflite:export_fp16",
            ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
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


PIP_NAMES = {
    "litert_torch": "litert-torch",
    "ai_edge_litert": "ai-edge-litert",
    "ai_edge_quantizer": "ai-edge-quantizer",
}


def check_available(chosen: list[Exporter]) -> None:
    """Fail before any work when a chosen format's converter is not installed."""
    for exporter in chosen:
        missing = exporter.missing()
        if missing:
            pip = " ".join(PIP_NAMES.get(m, m) for m in missing)
            others = ",".join(f for f in FAMILIES if f != exporter.family)
            raise RuntimeUnavailableError(
                f"{exporter.fmt} needs {', '.join(missing)}, which is not installed",
                f"pip install {pip} (the pins are in requirements.lock), or leave it out: --formats {others}",
            )


def export(
    fmt: str, module: Any, example_input: Any, out_path: str | os.PathLike[str], **options: Any
) -> dict[str, Any]:
    """Write ``module`` as format ``fmt`` to ``out_path``; returns the exporter's info."""
    return EXPORTERS[fmt].load()(module, example_input, Path(out_path), **options)


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


def user_frame(text: str) -> str | None:
    """``file:line`` of the last frame outside the installed libraries that an exception quotes."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    mine = [(f, n) for f, n in frames if "site-packages" not in f and "/lib/python" not in f]
    return f"{mine[-1][0]}:{mine[-1][1]}" if mine else None


def conversion_error(fmt: str, exc: BaseException, log: str = "") -> ExportError:
    """An ExportError naming the failing op when the converter's message reveals it, or the line
    of the model that branches on tensor values (data-dependent control flow)."""
    text = f"{exc}\n{log}"
    if "data-dependent" in text or "DataDependent" in type(exc).__name__:
        where = user_frame(text)
        return ExportError(
            f"{fmt} cannot export the model: it branches on a tensor's value"
            + (f" at {where}" if where else "")
            + " (data-dependent control flow)",
            "compute both branches and select with torch.where (or use torch.cond); --debug shows the trace",
        )
    op = failing_op(text)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    where = f" at op {op}" if op else ""
    return ExportError(
        f"{fmt} conversion failed{where}: {first[:300]}",
        "rewrite that op in the model with a supported equivalent, or drop this format with --formats",
    )
