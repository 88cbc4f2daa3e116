"""Exporters: one file per float format (``pt2``, ``onnx``, ``tflite``), each a ``write`` named by
the format registry (:mod:`edgekit.formats`), and what they share: turning a converter's failure
into one error that names the op or the line of the model.

A writer is ``write(request) -> info``: ``request.model`` (an ``nn.Module``), ``request.example``
(the NCHW float tensor it takes), ``request.path``; ``info`` is what the manifest records about
the written file (opset, ops, converter route...).
"""

from __future__ import annotations

import re

from edgekit.errors import ExportError

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
