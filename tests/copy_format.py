"""A test-only format in one file: ``onnx-copy`` is ``model.onnx`` copied, run by ONNX Runtime.

Registered by ``tests/test_formats.py`` with one line, it must go through export, verification,
eval, bench and the report without any other file of edgekit knowing its name.
"""

from __future__ import annotations

import shutil
from typing import Any

from edgekit.formats import Format, Layout, Precision, WriteRequest

FORMAT = Format(
    "onnx-copy",
    "onnx-copy",
    "model_copy.onnx",
    Precision.FP32,
    Layout.NCHW,
    "copy_format:write",
    ("onnxruntime",),
    source="onnx-fp32",
)


def write(request: WriteRequest) -> dict[str, Any]:
    shutil.copyfile(request.source, request.path)
    return {"copied_from": request.source.name}


def fail(request: WriteRequest) -> dict[str, Any]:
    """A writer that fails (the lanes test: an error in a second process)."""
    from edgekit.errors import ExportError

    raise ExportError("copy failed on purpose", "nothing to fix: a test")
