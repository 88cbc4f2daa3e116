"""The Python API: the CLI's steps for notebooks and training scripts, returning typed results.

    import edgekit
    art = edgekit.export(model, example_input=torch.zeros(1, 3, 96, 96), int8=True,
                         calib="data/train", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    art.eval("data/val").row("onnx-int8").top1      # EvalResult, as `edgekit eval --json`
    art.bench(threads=[1, 4], target="pi4-emu")      # BenchResult, as `edgekit bench --json`
    art.report()                                     # path of report.md

``model`` is a zoo name, ``file.py:factory`` or an ``nn.Module`` (then its input side comes from
``example_input`` and its preprocessing from the keyword arguments, as the CLI's flags).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import UsageError

if TYPE_CHECKING:
    from edgekit.bench import BenchResult
    from edgekit.evaluate import EvalResult
    from edgekit.manifest import Manifest


@dataclass
class Artifact:
    """An artifact folder and its manifest; the next steps as methods."""

    folder: Path
    manifest: Manifest

    def eval(self, data: str | os.PathLike[str] | None = None, **options: Any) -> EvalResult:
        """Accuracy of every file vs PyTorch float (options as `edgekit eval`: limit, target...)."""
        from edgekit.evaluate import evaluate

        return evaluate(self.folder, _expand(data), **options)

    def bench(self, threads: Sequence[int] = (1,), target: str = "local", **options: Any) -> BenchResult:
        """Latency of every file (options as `edgekit bench`: formats, runs, min_time, profile...)."""
        from edgekit.bench import bench

        return bench(self.folder, threads=list(threads), target=target, **options)

    def report(self, html: bool = False) -> Path:
        """Write report.md (and report.html) from what was measured so far; its path."""
        from edgekit.report import write_report

        return write_report(self.folder, html=html).path

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.folder / entry.path for name, entry in self.manifest.files.items()}


def export(
    model: Any,
    *,
    example_input: Any = None,
    int8: bool = False,
    calib: str | os.PathLike[str] | None = None,
    formats: Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    bgr: bool = False,
    **options: Any,
) -> Artifact:
    """`edgekit export` for ``model``; the other options are the CLI's (weights, num_classes,
    labels, width, resolution, calib_samples, gptq...), as keyword arguments."""
    from edgekit import pipeline

    if example_input is not None:
        options["resolution"] = _side(example_input)
    manifest = pipeline.export(
        model,
        out_dir=_expand(out),
        formats=list(formats) if formats else None,
        int8=int8,
        calib=_expand(calib),
        preprocess={
            "mean": mean,
            "std": std,
            "resize": resize,
            "interpolation": interpolation,
            "color": "BGR" if bgr else None,
        },
        **options,
    )
    return Artifact(Path(manifest.folder), manifest)


def load(folder: str | os.PathLike[str]) -> Artifact:
    """An artifact folder written earlier (its files checked against the manifest's sha256)."""
    from edgekit.manifest import read_manifest

    return Artifact(Path(folder), read_manifest(Path(folder)))


def _expand(path: str | os.PathLike[str] | None) -> str | None:
    """A path as a user types it in a notebook: ``~`` means the home folder, as in a shell."""
    return None if path is None else os.path.expanduser(os.fspath(path))


def _side(example_input: Any) -> int:
    """The input side of an NCHW example (the networks take square images)."""
    shape = tuple(getattr(example_input, "shape", ()))
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise UsageError(
            f"example_input has shape {list(shape)}", "pass one NCHW image batch: torch.zeros(1, 3, H, H)"
        )
    return int(shape[2])
