"""Inference engines behind one interface, found by name; the one way edgekit runs a file.

    from runtimes import get_runtime, run_file
    rt = get_runtime("onnxruntime")          # "torch" | "onnxruntime" | "litert" | "openvino" | a plug-in
    ok, reason = rt.available()
    sess = rt.load("model.onnx", threads=1)
    logits = sess.run(x)                     # float32 in the file's layout -> float32 logits
    logits = run_file("model_int8.tflite", x_nchw, layout="NHWC")   # verify, eval, analyze

Third-party engines register an entry point in the group ``edgekit.runtimes`` whose object is a
:class:`runtimes.base.Runtime` subclass or instance (``[project.entry-points."edgekit.runtimes"]
myrt = "mypkg.rt:MyRuntime"``). Nothing heavy is imported here: each engine imports its library
when it loads a file.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from edgekit.errors import RuntimeUnavailableError, UsageError
from runtimes.base import Runtime, Session

__all__ = [
    "ENTRY_POINT_GROUP",
    "Runtime",
    "Session",
    "get_runtime",
    "run_batches",
    "run_file",
    "runtime_for_file",
    "runtime_names",
    "runtimes_for_file",
]

ENTRY_POINT_GROUP = "edgekit.runtimes"
_BUILTIN = {
    "torch": "runtimes.pytorch:TorchRuntime",
    "onnxruntime": "runtimes.ort:OrtRuntime",
    "litert": "runtimes.litert:LiteRTRuntime",
    "openvino": "runtimes.openvino:OpenVinoRuntime",
    "executorch": "runtimes.executorch:ExecuTorchRuntime",
    "ncnn": "runtimes.ncnn:NcnnRuntime",
}
_ALIASES = {"ort": "onnxruntime", "tflite": "litert", "pytorch": "torch"}


def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _BUILTIN}


def runtime_names() -> list[str]:
    """Built-in engines first, then plug-ins, in a stable order."""
    return [*_BUILTIN, *sorted(_entry_points())]


def get_runtime(name: str) -> Runtime:
    """A fresh :class:`Runtime` for ``name``; raises UsageError for an unknown name."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in _BUILTIN:
        module, attr = _BUILTIN[key].split(":")
        obj = getattr(importlib.import_module(module), attr)
    else:
        plugins = _entry_points()
        if key not in plugins:
            raise UsageError(f"unknown runtime {name!r}", f"choose from {', '.join(runtime_names())}")
        try:
            obj = plugins[key].load()
        except Exception as exc:  # a broken plug-in must not take the built-in engines down with it
            raise RuntimeUnavailableError(
                f"runtime plug-in {key!r} failed to load: {exc}",
                f"fix or uninstall the package providing entry point {key!r}",
            ) from exc
    runtime = obj() if isinstance(obj, type) else obj
    if not isinstance(runtime, Runtime):
        raise RuntimeUnavailableError(
            f"runtime {key!r} is a {type(runtime).__name__}, not a runtimes.base.Runtime",
            "make the entry point name a Runtime subclass or instance",
        )
    if not runtime.name:
        runtime.name = key
    return runtime


def runtimes_for_file(path: str | os.PathLike[str]) -> list[str]:
    """Every known runtime that loads this file's suffix (built-ins first)."""
    suffix = Path(path).suffix.lower()
    names = []
    for name in runtime_names():
        try:
            if suffix in get_runtime(name).suffixes:
                names.append(name)
        except RuntimeUnavailableError:
            continue
    return names


def runtime_for_file(path: str | os.PathLike[str]) -> str:
    """The default runtime for a file: .onnx -> onnxruntime, .tflite -> litert, .pt2 -> torch."""
    names = runtimes_for_file(path)
    if not names:
        raise UsageError(f"no runtime loads {Path(path).name}", "expected a .onnx, .tflite or .pt2 file")
    return names[0]


def run_file(
    path: str | os.PathLike[str],
    batch: np.ndarray,
    layout: str = "NCHW",
    engine: str | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Float32 logits of a model file for an NCHW float32 ``batch``, fed in the file's ``layout``
    (NCHW or NHWC), in ``engine`` (default: the file's). int8 I/O is (de)quantised by the session."""
    return run_batches(path, {"batch": batch}, layout, engine, threads)["batch"]


def run_batches(
    path: str | os.PathLike[str],
    batches: dict[str, np.ndarray],
    layout: str = "NCHW",
    engine: str | None = None,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """:func:`run_file` for several batches, the file loaded once (a ``.pt2`` takes ~1.5 s to load)."""
    session = get_runtime(engine or runtime_for_file(path)).load(path, threads=threads)
    outputs = {}
    for key, batch in batches.items():
        x = batch if layout == "NCHW" else batch.transpose(0, 2, 3, 1)
        outputs[key] = session.run(np.ascontiguousarray(x, dtype=np.float32))
    return outputs
