"""Where calibration and evaluation images come from: a folder, a .npy array, or built-in photos.

Every source ends as one NCHW float32 batch preprocessed by the model's :class:`PreprocessSpec`,
so the ONNX and the TFLite quantiser see exactly the same tensors.

The built-in source needs no user data and no network: the real photographs that scikit-image
ships as files, cut into seeded random crops (scale, aspect, position, flip) — varied views help
the range estimators more than 18 centre crops would. ``random`` (Gaussian noise) exists only as
an explicit choice for smoke tests: it says nothing about real activation ranges.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.preprocess import PreprocessSpec, load_image, preprocess_pil
from edgekit.errors import DataError
from edgekit.manifest import check_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_SAMPLES = 128
# A folder or .npy gives at most this many by default (a seeded subset): ranges settle within a few
# hundred images, while the calibration passes grow with every one (a training set has thousands).
MAX_DEFAULT_SAMPLES = 256
CROP_SCALE = (0.25, 1.0)  # area fraction of a crop: wide enough to vary, not so tight it is all blur

# Photographs shipped as files inside scikit-image (grey ones are converted to RGB). Only files
# present on disk are used: nothing is ever downloaded. Textures, documents and synthetic images
# (brick, grass, page, text, moon, chessboard, color...) are left out on purpose: they pushed the
# first layers' ranges to 1.4-1.9x the ranges ImageNet images give (docs/int8.md).
BUILTIN_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
)


@dataclass(frozen=True)
class CalibrationSet:
    """The tensors (NCHW float32) and where they came from, for the manifest."""

    tensors: np.ndarray
    source: str
    detail: dict[str, Any]


def find_images(folder: str | Path, option: str = "--calib") -> list[Path]:
    """Every image file under ``folder`` (any depth), sorted so that sampling is reproducible.

    ``option`` is the flag that named the folder, so the hint says what to do with it."""
    folder = check_path(folder, option)
    fallback = (
        "or use --calib builtin" if option == "--calib" else f"or leave out {option} for the built-in photos"
    )
    if not folder.is_dir():
        raise DataError(f"{option} {folder} is not a folder", f"pass an existing image folder {fallback}")
    files = image_files(folder)
    if not files:
        raise DataError(
            f"no images in {folder} ({option})",
            f"put {', '.join(IMAGE_SUFFIXES)} files in it (any depth) {fallback}",
        )
    return files


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted; symlinked folders followed (as torchvision's ImageFolder
    does: datasets are often assembled from links)."""
    return sorted(
        Path(root) / name
        for root, _, names in os.walk(folder, followlinks=True)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )


def check_source(source: str | Path | None, samples: int | None) -> None:
    """Fail before any work on a ``--calib`` / ``--calib-samples`` that cannot give tensors."""
    if samples is not None and samples < 1:
        raise DataError(f"--calib-samples must be at least 1, got {samples}", "e.g. --calib-samples 128")
    if source in (None, "", "builtin", "random"):
        return
    path = check_path(source, "--calib")
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise DataError(f"--calib {path} does not exist", "pass an existing .npy file or an image folder")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read {path}: {exc}", "save it with numpy.save (no pickled objects)"
            ) from exc
        if array.dtype.kind == "f" and array.ndim >= 1 and len(array):
            _check_finite(np.asarray(array), path)
        return
    find_images(path)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet synsets in class-index order (sorted wnids)."""
    text = (Path(__file__).resolve().parents[1] / "edgekit" / "data" / "imagenet_classes.txt").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def class_folders(folder: str | Path) -> list[str]:
    """The ImageFolder classes of ``folder``: its subfolders holding images, sorted (torchvision's
    order, which training code built on ImageFolder used for the output indices)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and image_files(p))


def labelled_images(
    folder: str | Path, labels: list[str] | None = None, option: str = "--data"
) -> list[tuple[Path, int | None]]:
    """Images of ``folder`` with their class index: the position of the image's folder name in
    ``labels`` (None when unknown)."""
    files = find_images(folder, option)
    index = {name: i for i, name in enumerate(labels or [])}
    return [(p, index.get(p.parent.name)) for p in files]


def evenly_spaced(items: list[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spaced, so a limited run still covers every class folder."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def load_images(
    paths: Sequence[Path], spec: PreprocessSpec, skip_bad_images: bool = False
) -> tuple[np.ndarray, list[Path]]:
    """Preprocess ``paths`` into one NCHW batch; unreadable files fail, or warn and skip."""
    arrays, kept = [], []
    for path in paths:
        try:
            arrays.append(load_image(path, spec))
            kept.append(path)
        except DataError as exc:
            if not skip_bad_images:
                raise
            log.warning("skipping %s", exc.message)
    if not arrays:
        raise DataError("no readable images among the given files", "check the folder's images")
    return np.stack(arrays).astype(np.float32), kept


def builtin_photos() -> list[tuple[str, Any]]:
    """The scikit-image photographs present on disk, as (name, RGB PIL image)."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).resolve().parent / "data"
    photos = []
    for name in BUILTIN_PHOTOS:
        path = folder / name
        if path.is_file():
            with Image.open(path) as img:
                photos.append((name, img.convert("RGB")))
    if not photos:
        raise DataError(
            f"no built-in photographs found in {folder}",
            "reinstall scikit-image, or pass --calib with an image folder",
        )
    return photos


def random_crop(
    img: Any,
    spec: PreprocessSpec,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """A RandomResizedCrop-style view (area fraction, aspect, position, flip) -> CHW normalised."""
    from PIL import Image

    w, h = img.size
    area = w * h * rng.uniform(*scale)
    aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    crop = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    # Resize to exactly resize x resize so that preprocess_pil's centre crop keeps the 87.5% view
    # a validation image gets: the crop statistics then match the model's evaluation input.
    crop = crop.resize((spec.resize, spec.resize), Image.BILINEAR)
    return preprocess_pil(crop, spec)


def builtin_tensors(spec: PreprocessSpec, samples: int, seed: int) -> np.ndarray:
    """``samples`` seeded crops of the built-in photographs, cycling over the photos."""
    rng = np.random.default_rng(seed)
    photos = builtin_photos()
    return np.stack([random_crop(photos[i % len(photos)][1], spec, rng) for i in range(samples)])


def random_tensors(spec: PreprocessSpec, samples: int, seed: int) -> np.ndarray:
    """Standard-normal tensors in the normalised input space (smoke tests only)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, 3, spec.resolution, spec.resolution)).astype(np.float32)


def npy_tensors(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """(N,3,H,W) float32 already preprocessed, or (N,H,W,3) uint8 images preprocessed here."""
    from PIL import Image

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "save it with numpy.save (no pickled objects)") from exc
    if array.ndim == 4 and array.shape[1] == 3 and array.dtype == np.float32:
        _check_finite(array, path)
        if array.shape[2:] != (spec.resolution, spec.resolution):
            raise DataError(
                f"{path} holds {array.shape[2]}x{array.shape[3]} tensors, the model takes "
                f"{spec.resolution}x{spec.resolution}",
                "store (N,H,W,3) uint8 images instead; they are resized here",
            )
        return np.ascontiguousarray(array)
    if array.ndim == 4 and array.shape[3] == 3 and array.dtype == np.uint8:
        return np.stack([preprocess_pil(Image.fromarray(a), spec) for a in array])
    raise DataError(
        f"{path} has shape {array.shape} and dtype {array.dtype}",
        "use (N,3,H,W) float32 preprocessed tensors or (N,H,W,3) uint8 images",
    )


def _check_finite(array: np.ndarray, path: Path) -> None:
    """NaN or infinity in calibration tensors would set every range from garbage."""
    bad = ~np.isfinite(array)
    if bad.any():
        samples = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))
        shown = ", ".join(str(i) for i in samples[:5]) + (" ..." if len(samples) > 5 else "")
        raise DataError(
            f"{path} holds {int(bad.sum())} NaN/infinite values in {len(samples)} of {len(array)} samples "
            f"(sample {shown})",
            "remove those samples or fix the preprocessing that wrote them",
        )


def calibration_set(
    source: str | Path | None,
    spec: PreprocessSpec,
    samples: int | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> CalibrationSet:
    """Resolve ``--calib`` (None/'builtin', 'random', a folder or a .npy file) into tensors."""
    source = "builtin" if source in (None, "") else source
    check_source(source, samples)
    wanted = DEFAULT_SAMPLES if samples is None else samples
    if source == "builtin":
        tensors = builtin_tensors(spec, wanted, seed)
        detail = {"photos": [name for name, _ in builtin_photos()], "crops": "random resized crop + flip"}
        return CalibrationSet(tensors, "builtin", detail)
    if source == "random":
        return CalibrationSet(random_tensors(spec, wanted, seed), "random", {"distribution": "N(0,1)"})
    path = Path(source)
    if path.suffix.lower() == ".npy":
        tensors = _take(npy_tensors(path, spec), samples, seed, str(path))
        return CalibrationSet(tensors, str(path), {"kind": "npy"})
    files = _take(find_images(path), samples, seed, str(path))
    tensors, kept = load_images(files, spec, skip_bad_images)
    detail = {"kind": "folder", "images": len(kept), "skipped": len(files) - len(kept)}
    return CalibrationSet(tensors, str(path), detail)


def _take(items: Any, samples: int | None, seed: int, where: str) -> Any:
    """A seeded subset of ``samples`` items; when None, all of them up to MAX_DEFAULT_SAMPLES."""
    if samples is None:
        if len(items) <= MAX_DEFAULT_SAMPLES:
            return items
        samples = MAX_DEFAULT_SAMPLES
    if samples > len(items):
        raise DataError(
            f"{where} has {len(items)} calibration samples, {samples} were asked for",
            f"add images or pass --calib-samples {len(items)}",
        )
    index = np.sort(np.random.default_rng(seed).choice(len(items), samples, replace=False))
    return items[index] if isinstance(items, np.ndarray) else [items[i] for i in index]
