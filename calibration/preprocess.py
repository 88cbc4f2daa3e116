"""One preprocessing definition per model, shared by calibration, verification, eval and bench.

The spec is plain data and lives in the manifest (``manifest["preprocess"]``); every consumer
builds its tensors through :func:`load_image` / :func:`to_layout`, so formats see identical input.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class PreprocessSpec:
    resolution: int = 224
    resize: int = 256  # short side before the centre crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"  # one of INTERPOLATIONS (PIL's resampling filters)
    color: str = "RGB"  # channel order the network takes: RGB, or BGR (mean/std in that order)
    value_range: tuple[float, float] = field(default=(0.0, 1.0))  # pixel range before mean/std

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std", "value_range"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def load_image(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Read an image file -> float32 CHW array, normalised. Grey/CMYK/alpha are converted to RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        pixels = next(iter(re.findall(r"\d+", str(exc))), "too many")
        raise DataError(
            f"image {path} has {pixels} pixels, more than PIL decodes safely",
            f"resize it below {Image.MAX_IMAGE_PIXELS // 10**6} megapixels, remove it, "
            "or pass --skip-bad-images",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}", "remove or replace the file, or pass --skip-bad-images"
        ) from exc
    return preprocess_pil(rgb, spec)


def preprocess_pil(img: Any, spec: PreprocessSpec) -> np.ndarray:
    """Resize the short side to ``spec.resize``, centre-crop ``spec.resolution``, normalise -> CHW."""
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        spec.interpolation
    ]
    w, h = img.size
    scale = spec.resize / min(w, h)
    # torchvision's Resize(int): the short side becomes exactly `resize`, the long side truncated.
    new_w, new_h = (
        (spec.resize, int(spec.resize * h / w)) if w <= h else (int(spec.resize * w / h), spec.resize)
    )
    if scale != 1.0:
        img = img.resize((new_w, new_h), resample)
    w, h = img.size
    left = round((w - spec.resolution) / 2.0)
    top = round((h - spec.resolution) / 2.0)
    img = img.crop((left, top, left + spec.resolution, top + spec.resolution))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if spec.color == "BGR":
        arr = arr[..., ::-1]
    lo, hi = spec.value_range
    arr = arr * (hi - lo) + lo
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    """NCHW batch -> the artifact's layout (``NCHW`` or ``NHWC``)."""
    if layout == "NCHW":
        return np.ascontiguousarray(batch)
    if layout == "NHWC":
        return np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    raise ValueError(f"unknown layout {layout!r}")
