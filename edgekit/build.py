"""Building the network an export writes: a zoo model (random, pretrained or the user's trained
weights), a ``file.py:factory``, or an ``nn.Module`` handed over by the Python API.

    built = build("mobilenet_v3", weights="runs/best.pt")   # classes from the checkpoint
    built = build("my_net.py:build", preprocess={"mean": (0.5,) * 3, "std": (0.5,) * 3})
    built.model, built.spec (the PreprocessSpec), built.labels (class names, or None),
    built.info (what the manifest says of it), built.name (the default folder name: the name as
    typed, plus _w/_r/_g for non-defaults)

A random-init zoo network gets batch-norm statistics from the built-in photographs, so that its
activations look like a trained network's; its params, MACs and classes are counted; and a model
whose output changes for the same input is refused (no file could be checked against it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibration.preprocess import INTERPOLATIONS, PreprocessSpec
from edgekit.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

MIN_RESOLUTION, MAX_RESOLUTION, STRIDE = 32, 1024, 32
DETERMINISM = 1e-5  # two forward passes may differ by kernel summation order, never by more
IMAGENET = PreprocessSpec()
BN_IMAGES = 32  # crops of the built-in photographs a random-init network's batch norm sees


@dataclass
class Built:
    """A network ready to export, with what the manifest says about it."""

    name: str
    model: nn.Module
    spec: PreprocessSpec
    info: dict[str, Any]
    labels: list[str] | None = None  # class names in output order


# The preprocessing a user may set (CLI --mean/--std/--resize/--crop/--interpolation/--bgr).
PREPROCESS_KEYS = ("mean", "std", "resize", "resolution", "interpolation", "color")


def build(
    name: str | nn.Module,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    labels: str | os.PathLike[str] | list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    seed: int = 0,
) -> Built:
    """A zoo model, ``path/to/file.py:factory``, or an ``nn.Module`` itself (module doc)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)  # random-init weights must be the same on every run
    zoo_only = {
        "--width": width,
        "--groups": groups,
        "--pretrained": pretrained or None,
        "--weights": weights,
    }
    given = [flag for flag, value in zoo_only.items() if value is not None]
    if isinstance(name, nn.Module) or is_file_spec(name):
        if given or num_classes is not None:
            raise UsageError(
                f"{', '.join(given) or '--num-classes'} apply to zoo models only",
                "load your weights and set the classes inside your own code",
            )
        built = (
            _build_module(name, resolution) if isinstance(name, nn.Module) else _build_file(name, resolution)
        )
    else:
        if pretrained and weights:
            raise UsageError("--pretrained and --weights are exclusive", "keep one of them")
        built = _build_zoo(name, width, resolution, groups, pretrained, weights, num_classes)
    built.spec = with_preprocess(built.spec, preprocess or {})
    counts = _counts(built.model, built.spec.resolution)
    built.info["args"]["num_classes"] = counts.pop("num_classes")
    built.info.update(counts)
    built.labels = _labels(labels, built)
    return built


def with_preprocess(spec: PreprocessSpec, given: dict[str, Any]) -> PreprocessSpec:
    """The network's preprocessing with the user's overrides (``None``: keep the default)."""
    unknown = set(given) - set(PREPROCESS_KEYS)
    if unknown:
        raise TypeError(f"unknown preprocessing options {sorted(unknown)}")
    changes = {k: v for k, v in given.items() if v is not None}
    for key in ("mean", "std"):
        if key in changes:
            values = tuple(float(v) for v in changes[key])
            if len(values) != 3 or (key == "std" and min(values) <= 0):
                raise UsageError(
                    f"--{key} takes 3 numbers (one per channel){', all > 0' if key == 'std' else ''}, "
                    f"got {changes[key]}",
                    f"e.g. --{key} 0.5,0.5,0.5",
                )
            changes[key] = values
    if "interpolation" in changes and changes["interpolation"] not in INTERPOLATIONS:
        raise UsageError(
            f"unknown interpolation {changes['interpolation']!r}", f"use one of {', '.join(INTERPOLATIONS)}"
        )
    if "resolution" in changes and "resize" not in changes:  # keep the crop fraction
        changes["resize"] = round(changes["resolution"] * spec.resize / spec.resolution)
    spec = dataclasses.replace(spec, **changes)
    if spec.resize < spec.resolution:
        raise UsageError(
            f"--resize {spec.resize} is smaller than the crop {spec.resolution}",
            f"resize to at least {spec.resolution} (the short side before the centre crop)",
        )
    return spec


def _labels(labels: str | os.PathLike[str] | list[str] | None, built: Built) -> list[str] | None:
    """Class names in output order: given (a file, one per line, or a list), ImageNet's synsets for a
    1000-class zoo network, else unknown (a calibration folder may still name them)."""
    classes = built.info["args"]["num_classes"]
    if labels is None:
        if (
            built.info["source"] == "zoo"
            and classes == 1000
            and not built.info.get("weights", {}).get("checkpoint")
        ):
            from calibration.sources import imagenet_synsets

            return imagenet_synsets()
        return None
    if not isinstance(labels, list):
        path = Path(labels)
        if not path.is_file():
            raise UsageError(
                f"--labels {path} does not exist", "pass a text file with one class name per line"
            )
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != classes:
        raise UsageError(
            f"{len(labels)} labels for a network with {classes} outputs",
            "give one class name per output, in order",
        )
    return [str(label) for label in labels]


def _build_zoo(
    name: str,
    width: float | None,
    resolution: int | None,
    groups: int | None,
    pretrained: bool,
    weights: str | os.PathLike[str] | None,
    num_classes: int | None,
) -> Built:
    from edgekit.manifest import sha256
    from edgekit.zoo import create_model, get_entry
    from edgekit.zoo.checkpoints import classifier_classes, load_into, read_checkpoint

    entry = get_entry(name)
    resolution = resolution or entry.resolution
    if resolution != entry.resolution:
        check_resolution(resolution)
    state = read_checkpoint(weights) if weights else None
    classes = num_classes or (classifier_classes(state) if state else None) or 1000
    model = create_model(entry.name, num_classes=classes, width=width, pretrained=pretrained, groups=groups)
    spec = PreprocessSpec(
        resolution=resolution,
        resize=round(resolution / entry.crop_pct),
        mean=tuple(entry.mean),
        std=tuple(entry.std),
    )
    args = {"width": width or 1.0, "resolution": resolution, "groups": groups, "pretrained": pretrained}
    info = {"name": entry.name, "source": "zoo", "family": entry.family, "paper": entry.paper, "args": args}
    if state is not None:
        load_into(model, state, weights)
        info["weights"] = {
            "checkpoint": str(Path(weights).resolve()),
            "sha256": sha256(weights),
            "classes": classes,
        }
    elif not pretrained:
        info["weights"] = {"init": "random (seeded)", **recalibrate_batchnorm(model, spec)}
    # The default folder name tells variants apart: mobilenet_v2_w0.5_r96.
    changed = (("w", width), ("r", None if resolution == entry.resolution else resolution), ("g", groups))
    suffix = "".join(f"_{k}{v}" for k, v in changed if v is not None)
    return Built(name + suffix, model, spec, info)  # the folder keeps the name as typed (an alias too)


def recalibrate_batchnorm(model: Any, spec: PreprocessSpec, images: int = BN_IMAGES) -> dict[str, Any]:
    """Re-estimate a random-init network's batch-norm statistics on the built-in photographs.

    With batch norm at identity, activations of a fresh deep network shrink layer by layer (logits
    ~1e-10 in MobileNetV2): int8 ranges, XNNPACK's scale checks and agreement figures would then
    describe rounding dust, not a network. Running statistics measured on real images give every
    layer the unit-scale activations a trained network has; the weights are untouched.
    """
    import torch

    from calibration import layout
    from calibration.sources import builtin_tensors
    from calibration.threads import one_thread

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return {"batchnorm_statistics": "none in this network"}
    batch = torch.from_numpy(builtin_tensors(spec, images, seed=0))
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    layout.for_passes(model.train())
    try:
        with torch.no_grad(), one_thread():  # a fixed summation order: the same bytes every run
            for chunk in batch.split(8):
                model(chunk)
    finally:
        layout.for_export(model.eval())
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return {"batchnorm_statistics": f"re-estimated on {images} crops of the built-in photographs"}


def check_args(name: str, resolution: int | None) -> None:
    """Fail fast, before any progress output, on what needs no network built."""
    from edgekit.zoo import get_entry

    if is_file_spec(name):
        path = Path(name.rpartition(":")[0]).expanduser()
        if not path.is_file():
            raise UsageError(f"no such file {path}", "pass path/to/module.py:factory")
        default = None
    else:
        default = get_entry(name).resolution  # raises UnknownModelError with suggestions
    if resolution not in (None, default):
        check_resolution(resolution)


def is_file_spec(name: str) -> bool:
    path, _, factory = name.rpartition(":")
    return path.endswith(".py") and bool(factory)


def _build_file(spec_str: str, resolution: int | None) -> Built:
    from torch import nn

    path_str, _, factory_name = spec_str.rpartition(":")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise UsageError(f"no such file {path}", "pass path/to/module.py:factory")
    module_spec = importlib.util.spec_from_file_location(f"edgekit_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: say where it failed, not ours
        raise UsageError(
            f"{path} failed to import: {type(exc).__name__}: {exc}",
            "fix the module; --debug shows the traceback",
        ) from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UsageError(
            f"{path} has no function {factory_name!r}", "name a function that returns an nn.Module"
        )
    try:
        model = factory()
    except Exception as exc:
        raise UsageError(
            f"{spec_str} raised {type(exc).__name__}: {exc}", "fix the factory; --debug shows the traceback"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"{spec_str} returned {type(model).__name__}, not an nn.Module", "return the network itself"
        )
    built = _from_module(model, resolution, f"{path.stem}:{factory_name}", path.stem)
    built.info.update(source="file", path=str(path.resolve()))
    return built


def _build_module(model: nn.Module, resolution: int | None) -> Built:
    """An ``nn.Module`` handed over by the Python API (its class name names the folder)."""
    name = type(model).__name__
    built = _from_module(model, resolution, name, name.lower())
    built.info["source"] = "module"
    return built


def _from_module(model: nn.Module, resolution: int | None, label: str, folder: str) -> Built:
    """A user's network: resolution, mean and std from its attributes unless given."""
    resolution = resolution or getattr(model, "resolution", None)
    if resolution is None:
        raise UsageError(f"{label}: input resolution unknown", "pass --resolution or set model.resolution")
    if int(resolution) < MIN_RESOLUTION // 4:
        raise UsageError(f"resolution {resolution} is too small", "use at least 8 pixels")
    resolution = int(resolution)
    mean, std = tuple(getattr(model, "mean", IMAGENET.mean)), tuple(getattr(model, "std", IMAGENET.std))
    spec = PreprocessSpec(resolution=resolution, resize=round(resolution / 0.875), mean=mean, std=std)
    info = {
        "name": label,
        "args": {"width": None, "resolution": resolution, "groups": None, "pretrained": False},
    }
    return Built(folder, model.eval(), spec, info)


def check_resolution(resolution: int) -> None:
    """The zoo's networks downsample by 32: other sizes break concatenations or lose pixels."""
    if not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution % STRIDE == 0):
        raise UsageError(
            f"resolution {resolution} is not supported",
            f"use a multiple of {STRIDE} from {MIN_RESOLUTION} to {MAX_RESOLUTION}, e.g. 96, 160 or 224",
        )


def _counts(model: nn.Module, resolution: int) -> dict[str, Any]:
    """Parameters and MACs (edgekit.counting's convention) and the number of classes; and two
    passes on the same input: an output that changes cannot be verified in any format."""
    import torch

    from edgekit.counting import count_module

    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            logits, again = model(x), model(x)
        params, macs = count_module(model, (1, 3, resolution, resolution))
    except RuntimeError as exc:
        raise UsageError(
            f"the network fails at {resolution}x{resolution}: {str(exc).splitlines()[0]}",
            "choose another --resolution",
        ) from exc
    change = float((again - logits).abs().max()) / max(float(logits.abs().max()), 1e-30)
    if change > DETERMINISM:
        raise UsageError(
            f"the model gives different outputs for the same input (max change {change:.2g} of its output "
            "scale): exported files cannot be checked against it",
            "call model.eval() and remove random ops (dropout in train mode, torch.randn, ...) from forward",
        )
    return {"params": params, "macs": macs, "num_classes": int(logits.shape[-1])}
