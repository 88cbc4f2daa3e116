"""Accuracy of every artifact in a folder against the PyTorch float reference (``edgekit eval``).

Each file runs in its real engine (runtimes package) on the same preprocessed images. Against
the float reference (``model.pt2`` in torch.export) every format gets top-1 agreement, top-5
overlap, logit cosine and SQNR; with labelled data (ImageFolder with ImageNet synset folders)
also top-1/top-5 and the drop in points. Without ``--data`` the built-in photographs are used
(seeded crops of scikit-image's photos, no labels).

``--target`` other than ``local`` runs the ONNX and TFLite files there (``runtimes.targets``:
one runner call per file, every image in it); the PyTorch reference always runs here.
The metric functions live in :mod:`edgekit.verify`, shared with the export gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration.preprocess import PreprocessSpec, to_layout
from edgekit.errors import ArtifactError, UsageError
from edgekit.machine import facts, int8_path
from edgekit.manifest import (
    FORMATS,
    check_writable,
    model_path,
    read_manifest,
    record_result,
    select_formats,
    write_json,
)
from edgekit.verify import cosine, sqnr_db, top1_agreement, top5_overlap

BUILTIN_IMAGES = 64
BUILTIN_SEED = 2024  # not the calibration seed: eval crops differ from the calibration crops
WORST = 5
DEFAULT_LAYOUT = {"torch": "NCHW", "onnx": "NCHW", "tflite": "NHWC"}


def evaluate(
    artifact_dir: str | Path,
    data: str | Path | None = None,
    limit: int | None = None,
    target: str = "local",
    threads: int = 1,
    out_file: str | Path | None = None,
    timeout: float | None = None,
    formats: list[str] | None = None,
) -> dict[str, Any]:
    """Run every artifact on the same images; per-format accuracy and agreement with PyTorch float."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be positive, got {limit}", "pass e.g. --limit 100")
    if out_file:
        check_writable(Path(out_file).parent, need_bytes=1 << 20)
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    if "torch" not in manifest["files"]:
        raise ArtifactError(f"{folder} has no torch reference (model.pt2)", "re-run `edgekit export` for it")
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    images, labels, names, data_desc = load_eval_images(spec, data, limit)
    remote = None if target == "local" else _remote(target, timeout)
    outputs, measured_by = {}, {}
    chosen = select_formats([f for f in FORMATS if f in manifest["files"]], formats)
    for fmt in ["torch", *(f for f in chosen if f != "torch")]:  # the reference always runs
        if remote is None or fmt == "torch":  # the float reference is local-only
            outputs[fmt], measured_by[fmt] = run_format(folder, manifest, fmt, images, threads)
        else:
            outputs[fmt], measured_by[fmt] = run_on_target(remote, folder, manifest, fmt, images, threads)
    if remote is not None:
        measured_by["torch"]["note"] = f"run locally as the reference; not on {target}"
    reference = outputs["torch"]
    rows = [
        {"format": fmt, **measured_by[fmt], **figures(reference, out, labels, names)}
        for fmt, out in outputs.items()
    ]
    if labels is not None:
        for row in rows:
            row["drop_top1"] = round(rows[0]["top1"] - row["top1"], 2)
    result = {
        "formats": rows,
        "measured": {
            "images": len(images),
            "data": data_desc,
            "labelled": labels is not None,
            "threads": threads,
            "target": target,
            "emulated": bool(remote is not None and remote.emulated),
            "reference": "torch (model.pt2, float32, local)",
            "preprocess": spec.to_dict(),
        },
    }
    if labels is None and data is not None:
        result["measured"]["labels_note"] = (
            f"no top-1/top-5: the folders of {data} are not ImageNet synsets (agreement with float only)"
        )
    if out_file:
        write_json(out_file, result)
    stored = record_result(folder, "eval", result)
    if stored is None:
        result["note"] = f"{folder} is read-only: results not stored there (use --out FILE to keep them)"
    return result


def load_eval_images(
    spec: PreprocessSpec, data: str | Path | None, limit: int | None
) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """NCHW batch, labels (None when unknown), image names, and a description of the data."""
    from calibration import sources

    if data is None:
        n = limit or BUILTIN_IMAGES
        batch = sources.builtin_tensors(spec, n, BUILTIN_SEED)
        photos = [name for name, _ in sources.builtin_photos()]
        names = [f"{photos[i % len(photos)]}#crop{i}" for i in range(n)]
        return batch, None, names, f"built-in photographs (scikit-image, {n} seeded crops, no labels)"
    items = sources.labelled_images(data)
    if limit is not None and limit < len(items):
        # Evenly spaced, so a limited run still covers every class folder.
        items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
    batch, _ = sources.load_images([p for p, _ in items], spec)
    known = [label for _, label in items]
    labels = np.array(known) if all(label is not None for label in known) else None
    names = [p.relative_to(data).as_posix() for p, _ in items]
    return batch, labels, names, str(data)


def run_format(
    folder: Path, manifest: dict[str, Any], fmt: str, images: np.ndarray, threads: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of one artifact in its default engine, and how they were obtained."""
    from runtimes import get_runtime, runtime_for_file

    path = model_path(folder, manifest, fmt)
    runtime = get_runtime(runtime_for_file(path))
    session = runtime.load(path, threads=threads)
    layout = manifest["files"][fmt].get("layout") or DEFAULT_LAYOUT[fmt.split("-")[0]]
    logits = session.run(to_layout(images, layout))
    info = session.describe()
    how = {
        "runtime": info.get("runtime"),
        "version": info.get("version"),
        "accelerator": info.get("delegate") or info.get("provider"),
        "layout": layout,
        **_cpu(manifest["files"][fmt], facts()),
    }
    return logits, how


def _cpu(entry: dict[str, Any], machine: dict[str, Any] | None) -> dict[str, Any]:
    """The CPU a file ran on and, for int8 files, its int8 path (an int8 figure names both)."""
    machine = machine or {}
    cpu = {"cpu": machine.get("cpu")}
    if entry.get("precision") == "int8":
        cpu["int8_path"] = int8_path(machine)
    return cpu


def _remote(spec: str, timeout: float | None) -> Any:
    from runtimes.targets import get_target

    target = get_target(spec, **({"timeout": timeout} if timeout else {}))
    target.check()
    return target


def run_on_target(
    target: Any, folder: Path, manifest: dict[str, Any], fmt: str, images: np.ndarray, threads: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of one artifact on a remote/emulated target: one runner call with every image."""
    from runtimes import runtime_for_file

    path = model_path(folder, manifest, fmt)
    engine = runtime_for_file(path)
    layout = manifest["files"][fmt].get("layout") or DEFAULT_LAYOUT[fmt.split("-")[0]]
    result = target.run(path, engine, threads=threads, warmup=0, runs=1, inputs=to_layout(images, layout))
    how = {
        "runtime": engine,
        "version": result.get("engine_version"),
        "accelerator": "XNNPACK" if result.get("xnnpack") else None,
        "layout": layout,
        "target": target.name,
        "machine": result.get("machine"),
        "emulated": target.emulated,
        **_cpu(manifest["files"][fmt], result.get("machine")),
    }
    if result.get("note"):
        how["note"] = result["note"]
    return np.asarray(result["outputs"], dtype=np.float32).reshape(len(images), -1), how


def _finite(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None


def figures(
    reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None, names: list[str]
) -> dict[str, Any]:
    """Agreement, top-5 overlap, cosine, SQNR vs the reference; top-1/5 with labels; worst images."""
    ref = reference.astype(np.float64)
    out = output.astype(np.float64)
    cos = cosine(ref, out)
    row: dict[str, Any] = {
        "images": len(out),
        "agreement_top1": round(100 * top1_agreement(ref, out), 2),
        "top5_overlap": round(100 * top5_overlap(ref, out), 2),
        "cosine": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "sqnr_db": _finite(sqnr_db(ref, out)),  # None: identical outputs (no noise to measure)
        "worst": [{"image": names[i], "cosine": round(float(cos[i]), 6)} for i in np.argsort(cos)[:WORST]],
    }
    if labels is not None:
        top5 = np.argsort(-out, axis=1)[:, :5]
        row["top1"] = round(100 * float(np.mean(top5[:, 0] == labels)), 2)
        row["top5"] = round(100 * float(np.mean((top5 == labels[:, None]).any(1))), 2)
    return row
