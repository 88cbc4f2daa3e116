"""ONNX -> ncnn (``model.ncnn.param`` + ``model.ncnn.bin``) with pnnx, Tencent's converter.

pnnx converts the verified ``model.onnx`` directly (0.7 s; no re-tracing of the PyTorch model) with
``fp16=0``: float32 weights, so the file computes what the ONNX file computes; fp16 storage is a
runtime option of ncnn, not a different file. pnnx writes side files (its own param/bin, a Python
re-implementation, a test script, a simplified ONNX beside its input): they go to a temporary
folder with a copy of the ONNX file; only the two ncnn files are kept.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.errors import ExportError
from edgekit.formats import WriteRequest

TIMEOUT_S = 600


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``ncnn-fp32`` writer: ``request.source`` (model.onnx) through the pnnx binary."""
    import pnnx

    param, weights = request.path, request.path.with_suffix(".bin")
    shape = ",".join(str(d) for d in request.example.shape)
    with tempfile.TemporaryDirectory(prefix="edgekit-pnnx-") as tmp:
        side = Path(tmp)
        source = side / "model.onnx"  # pnnx writes its simplified ONNX beside its input
        shutil.copyfile(request.source, source)
        command = [
            pnnx.EXEC_PATH,
            str(source),
            f"inputshape=[{shape}]f32",
            "fp16=0",
            f"ncnnparam={param}",
            f"ncnnbin={weights}",
            *(f"{key}={side / name}" for key, name in SIDE_FILES.items()),
        ]
        proc = subprocess.run(command, cwd=side, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ExportError(
            f"pnnx failed on {Path(request.source).name} (exit {proc.returncode}): {' | '.join(tail)}",
            "leave ncnn out (--formats onnx,tflite) and report the op pnnx names",
        )
    return {
        "converter": f"pnnx {version()} (from model.onnx, fp16=0)",
        "input": {"name": "in0", "shape": list(request.example.shape), "dtype": "float32"},
        "layers": layer_counts(param),
    }


SIDE_FILES = {
    "pnnxparam": "model.pnnx.param",
    "pnnxbin": "model.pnnx.bin",
    "pnnxpy": "model_pnnx.py",
    "pnnxonnx": "model.pnnx.onnx",
    "ncnnpy": "model_ncnn.py",
}


def layer_counts(param: Path) -> dict[str, int]:
    """ncnn layer types of a .param file, most frequent first (line 3 on: ``Type name ...``)."""
    lines = param.read_text().splitlines()[2:]
    return dict(Counter(line.split()[0] for line in lines if line.strip()).most_common())


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("pnnx")
