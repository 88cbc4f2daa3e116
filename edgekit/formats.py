"""Every file format edgekit writes, in one registry: what a file is, what writes it, what runs it.

A format is one :class:`Format`. Export, verification, eval, bench, the reports, pi-bench and the
zoo bench iterate :func:`registry`; nothing else spells a format name. A new format is one writer
file plus one entry here (or, from another package, an entry point in the group
``edgekit.formats`` whose object is a Format or a list of them)::

    Format("onnx-int8", "onnx", "model_int8.onnx", Precision.INT8, Layout.NCHW,
           writer="calibration.onnx_int8:write", engines=("onnxruntime",), source="onnx-fp32",
           grid="calibration.onnx_int8:weight_grid")

A writer is ``write(request: WriteRequest) -> dict`` (what the manifest records about the file);
``grid`` names the int8 weight grid's factory ``(per_channel) -> WeightGrid``. Nothing heavy is
imported here: writers load when they write.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgekit.errors import RuntimeUnavailableError, UsageError

ENTRY_POINT_GROUP = "edgekit.formats"
PIP_NAMES = {
    "litert_torch": "litert-torch",
    "ai_edge_litert": "ai-edge-litert",
    "ai_edge_quantizer": "ai-edge-quantizer",
}


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Layout(StrEnum):
    NCHW = "NCHW"
    NHWC = "NHWC"


@dataclass(frozen=True)
class Format:
    """One kind of file: its name (``onnx-int8``), what ``--formats`` calls its family, its file
    name, precision and input layout, the writer, the engines that run it (default first)."""

    name: str
    family: str
    filename: str
    precision: Precision
    layout: Layout
    writer: str  # "module:function", imported when the file is written
    engines: tuple[str, ...]
    requires: tuple[str, ...] = ()  # import names the writer needs (checked before any work)
    source: str | None = None  # the format whose file this one is made from
    baseline: str | None = None  # the float format written beside it, compared with (not read)
    grid: str | None = None  # int8: "module:function" (per_channel) -> its WeightGrid
    dynamic_batch: bool = False  # can take a symbolic batch dimension (--dynamic-batch)
    companions: tuple[str, ...] = ()  # files written beside ``filename`` (ncnn's .bin), hashed too
    lane: str = "main"  # formats of another lane are written in a second process (edgekit.lanes);
    # "any": a file no other format reads, written in whichever lane has the least work
    # Seconds to write + verify (+ calibrate) MobileNetV3-large at 224 px on a 2-core AMD EPYC
    # (manifest timings): lane balancing reads their ratios (edgekit.lanes, docs/export.md).
    cost: float = 10.0

    @property
    def int8(self) -> bool:
        return self.precision is Precision.INT8

    @property
    def engine(self) -> str:
        return self.engines[0]

    def load_writer(self) -> Callable[[WriteRequest], dict[str, Any]]:
        return _load(self.writer)

    def weight_grid(self, per_channel: bool) -> Any:
        """The int8 weight grid this format's quantiser rounds onto."""
        if self.grid is None:
            raise ValueError(f"{self.name} is not an int8 format")
        return _load(self.grid)(per_channel)

    def missing(self) -> list[str]:
        """The packages the writer needs that are not installed (checked without importing)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


@dataclass
class WriteRequest:
    """What a writer gets: the network, an example input (NCHW), where to write, and for formats
    made from another file (``source``) or from calibration data (``int8``) those too."""

    model: Any
    example: Any
    path: Path
    source: Path | None = None
    dynamic_batch: bool = False
    int8: Any = None  # calibration.int8.Int8Request for int8 formats
    options: dict[str, Any] = field(default_factory=dict)


_BUILTIN = (
    Format(
        "torch",
        "torch",
        "model.pt2",
        Precision.FP32,
        Layout.NCHW,
        "exporters.pt2:write",
        ("torch",),
        dynamic_batch=True,
        lane="any",  # nothing reads model.pt2: it fills the lighter lane
        cost=7,
    ),
    Format(
        "onnx-fp32",
        "onnx",
        "model.onnx",
        Precision.FP32,
        Layout.NCHW,
        "exporters.onnx:write",
        ("onnxruntime", "openvino"),
        ("onnx", "onnxslim"),
        dynamic_batch=True,
        cost=2,
    ),
    Format(
        "tflite-fp32",
        "tflite",
        "model_fp32.tflite",
        Precision.FP32,
        Layout.NHWC,
        "exporters.tflite:write",
        ("litert",),
        ("litert_torch", "ai_edge_litert"),
        lane="litert",
        cost=22,
    ),
    Format(
        "tflite-fp16",
        "tflite",
        "model_fp16.tflite",
        Precision.FP16,
        Layout.NHWC,
        "exporters.tflite:write_fp16",
        ("litert",),
        ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
        source="tflite-fp32",
        lane="litert",
        cost=1,
    ),
    Format(
        "executorch-fp32",
        "executorch",
        "model.pte",
        Precision.FP32,
        Layout.NCHW,
        "exporters.executorch:write",
        ("executorch",),
        ("executorch",),
        lane="executorch",
        cost=29,
    ),
    Format(
        "ncnn-fp32",
        "ncnn",
        "model.ncnn.param",
        Precision.FP32,
        Layout.NCHW,
        "exporters.ncnn:write",
        ("ncnn",),
        ("ncnn", "pnnx"),
        source="onnx-fp32",
        companions=("model.ncnn.bin",),
        cost=1.5,
    ),
    Format(
        "ncnn-fp16",
        "ncnn",
        "model_fp16.ncnn.param",
        Precision.FP16,
        Layout.NCHW,
        "exporters.ncnn:write_fp16",
        ("ncnn",),
        ("ncnn", "pnnx"),
        source="onnx-fp32",
        companions=("model_fp16.ncnn.bin",),
        cost=1.5,
    ),
    Format(
        "onnx-int8",
        "onnx",
        "model_int8.onnx",
        Precision.INT8,
        Layout.NCHW,
        "calibration.onnx_int8:write",
        ("onnxruntime", "openvino"),
        ("onnx", "onnxruntime"),
        source="onnx-fp32",
        grid="calibration.onnx_int8:weight_grid",
        cost=28,
    ),
    Format(
        "tflite-int8",
        "tflite",
        "model_int8.tflite",
        Precision.INT8,
        Layout.NHWC,
        "calibration.tflite_int8:write",
        ("litert",),
        ("litert_torch", "ai_edge_litert"),
        baseline="tflite-fp32",  # quantised from the network (PT2E), not from the float file
        grid="calibration.tflite_int8:weight_grid",
        lane="litert-int8",
        cost=59,
    ),
    Format(
        "executorch-int8",
        "executorch",
        "model_int8.pte",
        Precision.INT8,
        Layout.NCHW,
        "calibration.executorch_int8:write",
        ("executorch",),
        ("executorch",),
        grid="calibration.executorch_int8:weight_grid",
        lane="executorch",
        cost=114,
    ),
)
_REGISTERED: dict[str, Format] = {}
REFERENCE = "torch"  # the float reference every other file is checked against


def register(fmt: Format) -> Format:
    """Add a format (after the built-in ones); returns it."""
    _REGISTERED[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def registry() -> dict[str, Format]:
    """Every known format by name: built-in, then entry-point plug-ins, then registered ones."""
    found = {f.name: f for f in _BUILTIN}
    for fmt in _plugins():
        found.setdefault(fmt.name, fmt)
    for name, fmt in _REGISTERED.items():
        found.setdefault(name, fmt)
    return found


def get(name: str) -> Format:
    formats = registry()
    if name not in formats:
        raise UsageError(f"unknown format {name!r}", f"known formats: {', '.join(formats)}")
    return formats[name]


def for_file(path: str | Path) -> Format:
    """The format of a file outside a manifest, from its name (``model_int8.onnx`` -> onnx-int8)."""
    name = Path(path).name
    formats = registry().values()
    exact = [f for f in formats if f.filename == name]
    if exact:
        return exact[0]
    suffix = Path(name).suffix
    same_suffix = [f for f in formats if Path(f.filename).suffix == suffix]
    if not same_suffix:
        raise UsageError(f"unknown model file type: {name}", "expected a .onnx, .tflite or .pt2 file")
    int8 = [f for f in same_suffix if f.int8 == ("int8" in name)]
    return (int8 or same_suffix)[0]


def families() -> list[str]:
    return list(dict.fromkeys(f.family for f in registry().values() if f.name != REFERENCE))


def resolve(wanted: list[str] | None, int8: bool) -> list[Format]:
    """What an export writes: the reference, the float formats of the families (or names) asked
    for, and with ``int8`` their int8 formats; in registry order, each after its source."""
    formats = registry()
    wanted = wanted or [f for f in families() if f in ("onnx", "tflite")]
    known = set(formats) | set(families())
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(
            f"unknown format {', '.join(unknown)}", f"use a comma list of {', '.join(families())}"
        )
    chosen = [
        f
        for f in formats.values()
        if f.name == REFERENCE or ((f.family in wanted or f.name in wanted) and (int8 or not f.int8))
    ]
    return _with_sources(chosen, formats)


def _with_sources(chosen: list[Format], formats: dict[str, Format]) -> list[Format]:
    names = {f.name for f in chosen}
    needed = {n for f in chosen for n in (f.source, f.baseline) if n and n not in names}
    return [f for f in formats.values() if f.name in names | needed]


def select(present: list[str], wanted: list[str] | None) -> list[str]:
    """The formats of ``present`` that ``wanted`` names: exact names (``onnx-int8``), families
    (``onnx``) or precisions (``int8``); all of them when nothing is named."""
    if not wanted:
        return list(present)
    formats = registry()
    known = {*formats, *families(), *(p.value for p in Precision)}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(
            f"unknown format {', '.join(unknown)}",
            "name formats (onnx-int8), families (onnx) or precisions (int8)",
        )

    def named(name: str) -> bool:
        fmt = formats.get(name)
        return name in wanted or (fmt is not None and (fmt.family in wanted or fmt.precision in wanted))

    chosen = [name for name in present if named(name)]
    if not chosen:
        raise UsageError(
            f"none of {', '.join(wanted)} is in this folder (it has {', '.join(present)})",
            "pick from those, or export the missing formats",
        )
    return chosen


def check_available(chosen: list[Format]) -> None:
    """Fail before any work when a chosen format's writer needs a package that is not installed."""
    for fmt in chosen:
        missing = fmt.missing()
        if missing:
            pip = " ".join(PIP_NAMES.get(m, m) for m in missing)
            others = ",".join(f for f in families() if f != fmt.family and f in ("onnx", "tflite"))
            raise RuntimeUnavailableError(
                f"{fmt.name} needs {', '.join(missing)}, which is not installed",
                f"pip install {pip} (the pins are in requirements.lock), or leave it out: --formats {others}",
            )


def _load(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _plugins() -> list[Format]:
    from importlib.metadata import entry_points

    found: list[Format] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        found += list(obj) if isinstance(obj, list | tuple) else [obj]
    return [f for f in found if isinstance(f, Format)]
