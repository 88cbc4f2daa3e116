"""Building the network an export writes: a zoo model or the user's own ``nn.Module``.

    built = build("mobilenet_v2", resolution=96)        # or build("my_net.py:build")
    built.model, built.spec (the PreprocessSpec), built.info (what the manifest says of it),
    built.name (the default folder name: the name as typed, plus _w/_r/_g for non-defaults)

A random-init zoo network gets batch-norm statistics from the built-in photographs, so that its
activations look like a trained network's; its params, MACs and classes are counted; and a model
whose output changes for the same input is refused (no file could be checked against it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibration.preprocess import PreprocessSpec
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


def build(
    name: str,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    pretrained: bool = False,
    seed: int = 0,
) -> Built:
    """A zoo model, or ``path/to/file.py:factory`` for a user's own ``nn.Module``."""
    import torch

    torch.manual_seed(seed)  # random-init weights must be the same on every run
    if is_file_spec(name):
        if width is not None or groups is not None or pretrained:
            raise UsageError(
                "--width, --groups and --pretrained apply to zoo models only",
                "set them inside your factory function",
            )
        built = _build_file(name, resolution)
    else:
        built = _build_zoo(name, width, resolution, groups, pretrained)
    counts = _counts(built.model, built.spec.resolution)
    built.info["args"]["num_classes"] = counts.pop("num_classes")
    built.info.update(counts)
    return built


def _build_zoo(
    name: str, width: float | None, resolution: int | None, groups: int | None, pretrained: bool
) -> Built:
    from edgekit.zoo import create_model, get_entry

    entry = get_entry(name)
    resolution = resolution or entry.resolution
    if resolution != entry.resolution:
        check_resolution(resolution)
    model = create_model(entry.name, width=width, pretrained=pretrained, groups=groups)
    spec = PreprocessSpec(
        resolution=resolution,
        resize=round(resolution / entry.crop_pct),
        mean=tuple(entry.mean),
        std=tuple(entry.std),
    )
    args = {"width": width or 1.0, "resolution": resolution, "groups": groups, "pretrained": pretrained}
    info = {"name": entry.name, "source": "zoo", "family": entry.family, "paper": entry.paper, "args": args}
    if not pretrained:
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
    model.train()
    try:
        with torch.no_grad(), one_thread():  # a fixed summation order: the same bytes every run
            for chunk in batch.split(8):
                model(chunk)
    finally:
        model.eval()
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
    resolution = resolution or getattr(model, "resolution", None)
    if resolution is None:
        raise UsageError(f"{spec_str}: input resolution unknown", "pass --resolution or set model.resolution")
    check_resolution(int(resolution))
    resolution = int(resolution)
    mean, std = tuple(getattr(model, "mean", IMAGENET.mean)), tuple(getattr(model, "std", IMAGENET.std))
    spec = PreprocessSpec(resolution=resolution, resize=round(resolution / 0.875), mean=mean, std=std)
    info = {
        "name": f"{path.stem}:{factory_name}",
        "source": "file",
        "path": str(path.resolve()),
        "args": {"width": None, "resolution": resolution, "groups": None, "pretrained": False},
    }
    return Built(path.stem, model.eval(), spec, info)


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
