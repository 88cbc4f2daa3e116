"""Accuracy of every artifact in a folder against the PyTorch float reference (``edgekit eval``).

Each file runs in its format's engine (``runtimes.run_file``, or the runner on a ``--target``) on
the same preprocessed images. Against the float reference (``model.pt2`` in torch.export) every
format gets top-1 agreement, top-5 overlap, logit cosine and SQNR; with labelled data (an
ImageFolder whose folder names are the manifest's labels: ImageNet synsets for the zoo, the user's
class names otherwise) also top-1/top-5, the drop in points and a per-class table. Without
``--data`` the built-in photographs are used (seeded crops of scikit-image's photos, no labels).

The result is an :class:`EvalResult`; ``to_dict`` is what ``--json`` prints and ``eval.json``
holds. The metric functions live in :mod:`edgekit.verify`, shared with the export gates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.preprocess import PreprocessSpec
from edgekit import formats as fmts
from edgekit.errors import ArtifactError, EdgekitError, UsageError
from edgekit.machine import facts, int8_path
from edgekit.manifest import Manifest, check_writable, read_manifest, record_result, write_json
from edgekit.verify import cosine

BUILTIN_IMAGES = 64
BUILTIN_SEED = 2024  # not the calibration seed: eval crops differ from the calibration crops
WORST = 5
PER_CLASS_ALL = 50  # up to this many classes the per-class table lists them all, else the worst
PER_CLASS_WORST = 10


@dataclass
class EvalRow:
    """One format's figures against the float reference, and how they were obtained."""

    format: str
    runtime: str
    images: int
    agreement_top1: float
    top5_overlap: float
    cosine: float
    cosine_min: float
    sqnr_db: float | None  # None: identical outputs (no noise to measure)
    worst: list[dict[str, Any]]
    layout: str
    cpu: str | None = None
    version: str | None = None
    accelerator: str | None = None
    int8_path: str | None = None  # int8 files: the CPU's int8 kernels (their figures are theirs)
    top1: float | None = None
    top5: float | None = None
    drop_top1: float | None = None
    per_class: dict[str, float] | None = None  # top-1 % per class (see EvalResult.classes)
    target: str | None = None
    emulated: bool | None = None
    machine: dict[str, Any] | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "sqnr_db"}


@dataclass
class EvalResult:
    formats: list[EvalRow]
    measured: dict[str, Any]
    note: str | None = None  # e.g. the folder was read-only and the result not stored
    stored: str | None = None
    classes: list[dict[str, Any]] | None = None  # per class: name, images, top-1 % per format

    def row(self, fmt: str) -> EvalRow:
        return next(r for r in self.formats if r.format == fmt)

    def to_dict(self) -> dict[str, Any]:
        data = {"formats": [r.to_dict() for r in self.formats], "measured": self.measured}
        if self.classes is not None:
            data["classes"] = self.classes
        return {**data, **({"note": self.note} if self.note else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        known = set(EvalRow.__dataclass_fields__)
        rows = [EvalRow(**{k: v for k, v in r.items() if k in known}) for r in data.get("formats", [])]
        return cls(rows, data.get("measured", {}), data.get("note"), classes=data.get("classes"))


def evaluate(
    artifact_dir: str | Path,
    data: str | Path | None = None,
    limit: int | None = None,
    target: str = "local",
    threads: int = 1,
    out_file: str | Path | None = None,
    timeout: float | None = None,
    formats: list[str] | None = None,
    runtimes: list[str] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    on_shard: Callable[[Any], None] | None = None,
) -> EvalResult:
    """Run every artifact on the same images; per-format accuracy and agreement with PyTorch float.

    With ``workers`` or ``ray_address`` the images are sharded over Ray actors
    (:mod:`edgekit.scale`; ``on_shard`` sees each finished shard); the figures are the same."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be positive, got {limit}", "pass e.g. --limit 100")
    sharded = workers is not None or ray_address is not None
    if sharded and target != "local":
        raise UsageError(
            f"--workers/--ray run the files on Ray workers, not on --target {target}",
            "drop --target, or drop --workers/--ray",
        )
    if out_file:
        check_writable(Path(out_file).parent, need_bytes=1 << 20)
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    if fmts.REFERENCE not in manifest.files:
        raise ArtifactError(f"{folder} has no torch reference (model.pt2)", "re-run `edgekit export` for it")
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    chosen = fmts.select([f for f in manifest.files if f != fmts.REFERENCE], formats)
    images = select_images(spec, data, limit, class_names(manifest, data))
    labels, names = images.labels, images.names
    remote = None if target == "local" else _remote(target, timeout)
    planned = runs(chosen, remote, runtimes)
    skipped = [
        {"format": fmt.name, "runtime": engine.runtime, "reason": engine.reason}
        for _, fmt, engine in planned
        if isinstance(engine, Skip)
    ]
    todo = [(key, fmt, engine) for key, fmt, engine in planned if not isinstance(engine, Skip)]
    scale_info = None
    if sharded:
        from edgekit import scale

        per_image, how, scale_info = scale.evaluate_sharded(
            manifest, todo, images, spec, threads, workers, ray_address, on_shard
        )
    else:
        per_image, how = _run_here(manifest, todo, images.load(spec), threads, remote, skipped)
    if remote is not None:
        how[fmts.REFERENCE]["note"] = f"run locally as the reference; not on {target}"
    rows = [
        EvalRow(format=how[key].pop("format"), **how[key], **figures(per, labels, names))
        for key, per in per_image.items()
    ]
    if labels is not None:
        for row in rows:
            row.drop_top1 = round(rows[0].top1 - row.top1, 2)
    measured = {
        "images": len(images),
        "data": images.description,
        "labelled": labels is not None,
        "threads": threads,
        "target": target,
        "emulated": bool(remote is not None and remote.emulated),
        "reference": "torch (model.pt2, float32, local)",
        "preprocess": spec.to_dict(),
    }
    if scale_info is not None:
        measured["ray"] = scale_info
    classes = None
    if data is not None:
        note = labels_note(manifest, data, names, labels)
        if note:
            measured["labels_note"] = note
    if labels is not None:
        measured["labelled_images"] = int((labels >= 0).sum())
        predicted = {key: per.predicted for key, per in per_image.items()}
        classes = per_class(predicted, labels, class_names(manifest, data) or [])
        seen = len(set(labels[labels >= 0].tolist()))
        measured["per_class"] = (
            f"all {seen} classes"
            if len(classes) == seen
            else f"the {len(classes)} of {seen} classes worst in float"
        )
        for key, row in zip(per_image, rows, strict=True):
            row.per_class = {c["class"]: c["top1"][key] for c in classes}
    if skipped:
        measured["skipped"] = skipped
    result = EvalResult(rows, measured, classes=classes)
    if out_file:
        write_json(out_file, result.to_dict())
    stored = record_result(folder, "eval", result.to_dict())
    result.stored = str(stored) if stored else None
    if stored is None:
        result.note = f"{folder} is read-only: results not stored there (use --out FILE to keep them)"
    return result


def _run_here(
    manifest: Manifest,
    todo: list[tuple[str, fmts.Format, str]],
    batch: np.ndarray,
    threads: int,
    remote: Any,
    skipped: list[dict[str, str]],
) -> tuple[dict[str, PerImage], dict[str, dict[str, Any]]]:
    """Every run in this process (the reference always; the files on ``remote`` when given). An
    engine failing on the target is a row skipped with the reason (appended to ``skipped``)."""
    outputs, how = {}, {}
    for key, fmt, engine in todo:
        if remote is None or fmt.name == fmts.REFERENCE:  # the float reference runs here
            outputs[key], how[key] = run_local(manifest, fmt, engine, batch, threads)
            continue
        try:
            outputs[key], how[key] = run_on_target(remote, manifest, fmt, engine, batch, threads)
        except EdgekitError as exc:
            skipped.append({"format": fmt.name, "runtime": engine, "reason": str(exc)})
    reference = outputs[fmts.REFERENCE]
    return {key: PerImage.of(reference, out) for key, out in outputs.items()}, how


@dataclass(frozen=True)
class Skip:
    """An engine of a format that cannot run here (not installed, or not on the target)."""

    runtime: str
    reason: str


def runs(
    chosen: list[str], remote: Any, engines: list[str] | None = None
) -> list[tuple[str, fmts.Format, str | Skip]]:
    """(row key, format, engine) for the reference and each chosen file in its default engine, plus
    the format's other engines named in ``engines`` (``["all"]``: every one), keyed
    ``onnx-int8 (openvino)``."""
    from runtimes import get_runtime
    from runtimes.targets import ENGINES

    found: list[tuple[str, fmts.Format, str | Skip]] = [
        (fmts.REFERENCE, fmts.get(fmts.REFERENCE), fmts.get(fmts.REFERENCE).engine)
    ]
    for name in chosen:
        fmt = fmts.get(name)
        if remote is not None and fmt.engine not in ENGINES:
            found.append((name, fmt, Skip(fmt.engine, f"{remote.name} runs {', '.join(ENGINES)} only")))
            continue
        found.append((name, fmt, fmt.engine))
        for engine in fmt.engines[1:]:
            if engines is None or (engine not in engines and "all" not in engines):
                continue
            ok, reason = get_runtime(engine).available()
            if ok and remote is not None and engine not in ENGINES:
                ok, reason = False, f"{remote.name} runs {', '.join(ENGINES)} only"
            found.append((f"{name} ({engine})", fmt, engine if ok else Skip(engine, reason)))
    return found


def class_names(manifest: Manifest, data: str | Path | None) -> list[str] | None:
    """The network's class names in output order: the manifest's labels, else the sorted folder
    names of ``data`` when there are as many as the network has outputs (ImageFolder's order)."""
    if manifest.labels is not None or data is None:
        return manifest.labels
    from calibration.sources import class_folders, imagenet_synsets

    folders = class_folders(data)
    classes = manifest.model["args"].get("num_classes")
    if folders and len(folders) == classes:
        return folders
    return imagenet_synsets() if classes == 1000 else None  # folders made before labels were recorded


def labels_note(
    manifest: Manifest, data: str | Path, names: list[str], labels: np.ndarray | None
) -> str | None:
    """How the folder names of ``data`` were read as labels, when the user must know (else None)."""
    known = class_names(manifest, data)
    folders = sorted({Path(n).parent.name for n in names})
    if known is None:
        return (
            f"no top-1/top-5: the manifest has no labels and the {len(folders)} folders of {data} are not "
            f"the network's {manifest.model['args'].get('num_classes')} classes (export with --labels FILE)"
        )
    if labels is None:
        return (
            f"no top-1/top-5: no folder of {data} is a label of the network "
            f"(folders: {', '.join(folders[:3])}; labels: {', '.join(known[:3])})"
        )
    outside = sorted({Path(n).parent.name for n, label in zip(names, labels, strict=True) if label < 0})
    parts = [] if manifest.labels is not None else ["labels are the sorted folder names (ImageFolder order)"]
    if outside:
        parts.append(
            f"left out of top-1/top-5: {len(outside)} folder(s) not among the network's labels "
            f"({', '.join(outside[:5])}{', ...' if len(outside) > 5 else ''})"
        )
    return "; ".join(parts) or None


def per_class(predicted: dict[str, np.ndarray], labels: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Top-1 per class and format (from each format's predicted classes); every class up to
    PER_CLASS_ALL, else the float reference's worst."""
    rows = []
    for index in sorted(set(labels[labels >= 0].tolist())):
        mask = labels == index
        top1 = {fmt: round(100 * float(np.mean(pred[mask] == index)), 1) for fmt, pred in predicted.items()}
        rows.append({"class": names[index], "images": int(mask.sum()), "top1": top1})
    if len(rows) > PER_CLASS_ALL:
        rows = sorted(rows, key=lambda r: r["top1"][fmts.REFERENCE])[:PER_CLASS_WORST]
    return rows


@dataclass
class EvalImages:
    """The images of an evaluation, chosen but not yet read: files (read by whoever runs a slice of
    them, here or on a Ray worker) or the built-in crops (made when chosen)."""

    names: list[str]
    labels: np.ndarray | None  # index into the class names, -1: a folder that is no class
    description: str
    files: list[Path] | None = None  # None: ``crops`` holds the built-in images
    crops: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def load(self, spec: PreprocessSpec, start: int = 0, stop: int | None = None) -> np.ndarray:
        """NCHW float32 batch of images ``start:stop``."""
        if self.files is None:
            return self.crops[start:stop]
        from calibration import sources

        return sources.load_images(self.files[start:stop], spec)[0]


def select_images(
    spec: PreprocessSpec, data: str | Path | None, limit: int | None, labels: list[str] | None = None
) -> EvalImages:
    """The images of ``data`` (at most ``limit``, evenly spaced), their labels (None when no image
    has one) and names; the built-in crops without ``data``."""
    from calibration import sources

    if data is None:
        n = limit or BUILTIN_IMAGES
        photos = [name for name, _ in sources.builtin_photos()]
        names = [f"{photos[i % len(photos)]}#crop{i}" for i in range(n)]
        desc = f"built-in photographs (scikit-image, {n} seeded crops, no labels)"
        return EvalImages(names, None, desc, crops=sources.builtin_tensors(spec, n, BUILTIN_SEED))
    items = sources.evenly_spaced(sources.labelled_images(data, labels), limit)
    known = np.array([-1 if label is None else label for _, label in items])
    names = [p.relative_to(data).as_posix() for p, _ in items]
    return EvalImages(names, known if (known >= 0).any() else None, str(data), files=[p for p, _ in items])


def load_eval_images(
    spec: PreprocessSpec, data: str | Path | None, limit: int | None, labels: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """NCHW batch, labels (index into ``labels``, -1 for a folder that is no class; None when no
    image has one), image names, and a description of the data."""
    images = select_images(spec, data, limit, labels)
    return images.load(spec), images.labels, images.names, images.description


def run_local(
    manifest: Manifest, fmt: fmts.Format, engine: str, images: np.ndarray, threads: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of one artifact here, in ``engine``, and how they were obtained."""
    from runtimes import run_file

    logits = run_file(manifest.file(fmt.name), images, fmt.layout, engine, threads)
    return logits, how_local(fmt, engine)


def how_local(fmt: fmts.Format, engine: str) -> dict[str, Any]:
    """How a file runs in this process: engine, its version and accelerator, layout, CPU."""
    from runtimes import get_runtime

    runtime = get_runtime(engine)
    return {
        "format": fmt.name,
        "runtime": engine,
        "version": runtime.version(),
        "accelerator": runtime.accelerator,
        "layout": str(fmt.layout),
        **_cpu(fmt, facts()),
    }


def _remote(spec: str, timeout: float | None) -> Any:
    from runtimes.targets import get_target

    target = get_target(spec, **({"timeout": timeout} if timeout else {}))
    target.check()
    return target


def run_on_target(
    target: Any, manifest: Manifest, fmt: fmts.Format, engine: str, images: np.ndarray, threads: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of one artifact in ``engine`` on a remote/emulated target: one runner call with every image."""
    x = images if fmt.layout == "NCHW" else images.transpose(0, 2, 3, 1)
    result = target.run(manifest.file(fmt.name), engine, threads=threads, warmup=0, runs=1, inputs=x)
    how = {
        "format": fmt.name,
        "runtime": engine,
        "version": result.get("engine_version"),
        "accelerator": "XNNPACK" if result.get("xnnpack") else None,
        "layout": str(fmt.layout),
        "target": target.name,
        "machine": result.get("machine"),
        "emulated": target.emulated,
        **_cpu(fmt, result.get("machine")),
    }
    if result.get("note"):
        how["note"] = result["note"]
    return np.asarray(result["outputs"], dtype=np.float32).reshape(len(images), -1), how


def _cpu(fmt: fmts.Format, machine: dict[str, Any] | None) -> dict[str, Any]:
    """The CPU a file ran on and, for int8 files, its int8 path (an int8 figure names both)."""
    machine = machine or {}
    return {"cpu": machine.get("cpu"), **({"int8_path": int8_path(machine)} if fmt.int8 else {})}


@dataclass
class PerImage:
    """One run's figures per image against the reference, in image order.

    Every row figure is a count or a sum over these (SQNR from the summed signal and noise energies),
    so the slices of a sharded run concatenate into exactly what one process computes."""

    predicted: np.ndarray  # argmax class
    top5: np.ndarray  # (n, 5) classes, best first
    agree: np.ndarray  # argmax is the reference's
    shared5: np.ndarray  # how many of the reference's top-5 classes this top-5 has
    cosine: np.ndarray  # float64
    signal: np.ndarray  # float64: sum of the reference logits squared
    noise: np.ndarray  # float64: sum of the squared differences from the reference

    @classmethod
    def of(cls, reference: np.ndarray, output: np.ndarray) -> PerImage:
        ref = reference.astype(np.float64)
        out = output.astype(np.float64)
        ref5 = np.argsort(-ref, axis=1)[:, :5]
        out5 = np.argsort(-out, axis=1)[:, :5]
        return cls(
            predicted=out.argmax(1),
            top5=out5,
            agree=ref.argmax(1) == out.argmax(1),
            shared5=(ref5[:, :, None] == out5[:, None, :]).any(2).sum(1),
            cosine=cosine(ref, out),
            signal=np.sum(ref**2, axis=1),
            noise=np.sum((ref - out) ** 2, axis=1),
        )

    @classmethod
    def concat(cls, parts: list[PerImage]) -> PerImage:
        """The parts' images one after the other (parts given in image order)."""
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.cosine)


def figures(per: PerImage, labels: np.ndarray | None, names: list[str]) -> dict[str, Any]:
    """Agreement, top-5 overlap, cosine, SQNR vs the reference; top-1/5 with labels; worst images."""
    n = len(per)
    noise = float(np.sum(per.noise))
    sqnr = 10.0 * float(np.log10(float(np.sum(per.signal)) / noise)) if noise else float("inf")
    cos = per.cosine
    row: dict[str, Any] = {
        "images": n,
        "agreement_top1": round(100 * (int(per.agree.sum()) / n), 2),
        "top5_overlap": round(100 * (int(per.shared5.sum()) / (5 * n)), 2),
        "cosine": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "sqnr_db": round(sqnr, 2) if np.isfinite(sqnr) else None,
        "worst": [{"image": names[i], "cosine": round(float(cos[i]), 6)} for i in np.argsort(cos)[:WORST]],
    }
    if labels is not None:  # over the images whose folder is a class
        mask = labels >= 0
        top5, known = per.top5[mask], int(mask.sum())
        row["top1"] = round(100 * (int((top5[:, 0] == labels[mask]).sum()) / known), 2)
        row["top5"] = round(100 * (int((top5 == labels[mask, None]).any(1).sum()) / known), 2)
    return row
