"""Name -> builder registry, in the manner of timm's: each family file registers its variants.

A builder is ``builder(num_classes=1000, width=1.0, **family_kwargs) -> nn.Module``; the entry
carries what a later step needs without building the network (default resolution, preprocessing,
which family options apply, where pretrained weights come from).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.errors import UnknownModelError, UsageError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    paper: str
    resolution: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    widths: tuple[float, ...] = (1.0,)  # the multipliers the paper reports; others are allowed
    options: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # e.g. {"groups": (1, 2, 3, 4, 8)}
    defaults: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # a key of edgekit.zoo.weights.SOURCES
    aliases: tuple[str, ...] = ()

    @property
    def resize(self) -> int:
        """Short side the image is resized to before the centre crop."""
        return round(self.resolution / self.crop_pct)


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str, **entry_fields: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``@register_model("mobilenet_v2", family=..., paper=..., resolution=224)``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} registered twice")
        entry = ModelEntry(name=name, builder=builder, **entry_fields)
        _REGISTRY[name] = entry
        for alias in entry.aliases:
            _ALIASES[alias] = name
        return builder

    return wrap


def list_models() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _load_families()
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, [*_REGISTRY, *_ALIASES], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `edgekit models` for the list"
        raise UnknownModelError(f"unknown model {name!r}", hint)
    return _REGISTRY[key]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    width: float | None = None,
    pretrained: bool = False,
    **options: Any,
) -> nn.Module:
    """Build a zoo network in eval mode. ``options`` are family options such as ``groups``."""
    entry = get_entry(name)
    kwargs = dict(entry.defaults)
    for key, value in options.items():
        if value is None:
            continue
        if key not in entry.options:
            raise UsageError(
                f"{entry.name} takes no option {key!r}", f"it takes: {', '.join(entry.options) or 'none'}"
            )
        if value not in entry.options[key]:
            allowed = ", ".join(str(v) for v in entry.options[key])
            raise UsageError(f"{entry.name}: {key}={value} is not supported", f"use one of {allowed}")
        kwargs[key] = value
    if width is not None:
        if not 0.05 <= width <= 4.0:
            raise UsageError(
                f"width {width} is out of range", "use a multiplier between 0.05 and 4, e.g. 0.5 or 1.0"
            )
        kwargs["width"] = width
    if pretrained:
        _check_pretrained(entry, num_classes, kwargs)
    model = entry.builder(num_classes=num_classes, **kwargs)
    if pretrained:
        from edgekit.zoo.weights import load_pretrained

        load_pretrained(model, entry.pretrained)
    return model.eval()


def _check_pretrained(entry: ModelEntry, num_classes: int, kwargs: dict[str, Any]) -> None:
    if entry.pretrained is None:
        with_weights = [e.name for e in _REGISTRY.values() if e.pretrained]
        raise UsageError(f"no pretrained weights for {entry.name}", f"pretrained: {', '.join(with_weights)}")
    baseline = {"width": 1.0, **entry.defaults}
    changed = [k for k, v in kwargs.items() if baseline.get(k) != v]
    if num_classes != 1000 or changed:
        raise UsageError(
            f"pretrained {entry.name} exists only with 1000 classes and default options",
            f"drop {', '.join(changed) or 'num_classes'} or train your own weights",
        )


def _load_families() -> None:
    # Importing the family modules runs their @register_model decorators.
    from edgekit.zoo import families  # noqa: F401
