"""ONNX -> ncnn (``model.ncnn.param`` + ``model.ncnn.bin``) with pnnx, Tencent's converter.

pnnx converts the verified ``model.onnx`` directly (0.7 s; no re-tracing of the PyTorch model).
``ncnn-fp32`` is written with ``fp16=0``: float32 weights, so the file computes what the ONNX
file computes. ``ncnn-fp16`` is what ncnn users get by default: pnnx's ``fp16=1`` (weights stored
as float16, half the .bin) run with ncnn's default fp16 storage and, on CPUs with it (ARMv8.2
asimdhp: Cortex-A76, not A72), fp16 arithmetic; runtimes/ncnn.py turns those on for that file.
The Input layer gets the export shape (``0=w 1=h 2=c``, as onnx2ncnn writes it): a shape hint
ncnn reads at load, and how the standalone runner knows what to feed a latency run.
pnnx writes side files (its own param/bin, a Python re-implementation, a test script, a
simplified ONNX beside its input): they go to a temporary folder with a copy of the ONNX file;
only the two ncnn files are kept.
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
    """The ``ncnn-fp32`` writer: ``request.source`` (model.onnx) through the pnnx binary, fp16=0."""
    return convert(request, fp16=False)


def write_fp16(request: WriteRequest) -> dict[str, Any]:
    """The ``ncnn-fp16`` writer: the same conversion with pnnx's fp16=1 (float16 weights)."""
    return convert(request, fp16=True)


def convert(request: WriteRequest, fp16: bool) -> dict[str, Any]:
    import pnnx

    param, weights = request.path, request.path.with_suffix(".bin")
    shape = ",".join(str(d) for d in request.example.shape)
    with tempfile.TemporaryDirectory(prefix="edgekit-pnnx-") as tmp:
        side = Path(tmp)
        source = side / "model.onnx"  # pnnx writes its simplified ONNX beside its input
        shutil.copyfile(request.source, source)
        # Written in the temp folder and moved in once complete: a failure leaves no half pair.
        command = [
            pnnx.EXEC_PATH,
            str(source),
            f"inputshape=[{shape}]f32",
            f"fp16={int(fp16)}",
            f"ncnnparam={side / param.name}",
            f"ncnnbin={side / weights.name}",
            *(f"{key}={side / name}" for key, name in SIDE_FILES.items()),
        ]
        proc = subprocess.run(command, cwd=side, capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0 or not (side / param.name).is_file() or not (side / weights.name).is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ExportError(
                f"pnnx failed on {Path(request.source).name} (exit {proc.returncode}): {' | '.join(tail)}",
                "leave ncnn out (--formats onnx,tflite) and report the op pnnx names",
            )
        with_input_shape(side / param.name, request.example.shape)
        shutil.move(side / weights.name, weights)
        shutil.move(side / param.name, param)
    return {
        "converter": f"pnnx {version()} (from model.onnx, fp16={int(fp16)})",
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


def with_input_shape(param: Path, shape: tuple[int, ...]) -> None:
    """Add ``0=w 1=h 2=c`` to the param's Input layers that have no shape (pnnx writes none)."""
    _, channels, height, width = shape
    lines = param.read_text().splitlines()
    for i, line in enumerate(lines[2:], start=2):
        fields = line.split()
        if fields and fields[0] == "Input" and len(fields) == 5:  # type, name, 0 bottoms, 1 top, blob
            lines[i] = f"{line} 0={width} 1={height} 2={channels}"
    param.write_text("\n".join(lines) + "\n")


def layer_counts(param: Path) -> dict[str, int]:
    """ncnn layer types of a .param file, most frequent first (line 3 on: ``Type name ...``)."""
    lines = param.read_text().splitlines()[2:]
    return dict(Counter(line.split()[0] for line in lines if line.strip()).most_common())


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("pnnx")
