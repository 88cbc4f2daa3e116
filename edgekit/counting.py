"""Parameters, multiply-accumulates (MACs) and memory access cost, per layer and in total.

Convention (the papers' "Mult-Adds", torchvision's ``_ops``): MACs are the multiply-accumulates
of convolution and linear layers at batch 1, bias excluded. The total comes from
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2); forward hooks on the leaf modules give
the per-layer split, and any difference (MAC-bearing ops called outside modules) is reported as
an ``(unattributed)`` row rather than hidden.

Memory access cost is ShuffleNetV2's MAC (Ma et al., 2018, guideline 1): input + output
activation elements + weight elements of each layer, so a 1x1 conv c1 -> c2 at h x w costs
``hw(c1 + c2) + c1 c2``. It counts elements, not bytes; multiply by the element size.

Networks are built on the ``meta`` device when possible: no weights are allocated and nothing
is computed, only shapes, so counting the whole zoo takes seconds. See docs/counting.md.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

KINDS = ("conv", "pointwise", "depthwise", "group conv", "linear", "bn", "act", "pool", "other")
UNATTRIBUTED = "(unattributed)"
CONVENTION = (
    "MACs: multiply-accumulates of conv and linear layers, batch 1, bias excluded "
    "(torch FlopCounterMode FLOPs / 2); memory access: input + output + weight elements per layer"
)


@dataclass
class Layer:
    """One call of a leaf module (a module called twice gives two rows)."""

    name: str
    kind: str
    out_shape: list[int]
    params: int
    macs: int
    memory_access: int


@dataclass
class Profile:
    layers: list[Layer]
    params: int
    macs: int  # FlopCounterMode's total (+ bias ops when asked for)
    mac_memory: int
    device: str

    @property
    def layer_macs(self) -> int:
        return sum(layer.macs for layer in self.layers if layer.name != UNATTRIBUTED)


# --- classifying and counting one layer --------------------------------------------------------


def layer_kind(module: nn.Module) -> str:
    """conv / pointwise / depthwise / group conv / linear / bn / act / pool / other."""
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return "pointwise" if math.prod(module.kernel_size) == 1 else "conv"
        # Depthwise: one filter group per input channel (out = k * in, a channel multiplier k).
        if module.groups == module.in_channels and module.out_channels % module.in_channels == 0:
            return "depthwise"
        return "group conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        return "bn"
    if isinstance(module, _classes()["act"]):
        return "act"
    if isinstance(module, _classes()["pool"]):
        return "pool"
    return "other"


def layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one conv or linear call, bias excluded (0 for anything else)."""
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 0  # scatter-style count differs; left to FlopCounterMode (shows as unattributed)
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
    elif isinstance(module, nn.Linear):
        per_output = module.in_features
    else:
        return 0
    return out.numel() * per_output


def _numel(values: Any) -> int:
    import torch

    if isinstance(values, torch.Tensor):
        return values.numel()
    if isinstance(values, list | tuple):
        return sum(_numel(v) for v in values)
    return 0


def _first_tensor(values: Any) -> torch.Tensor | None:
    import torch

    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, list | tuple):
        return next((t for t in map(_first_tensor, values) if t is not None), None)
    return None


# --- profiling a module ------------------------------------------------------------------------


def profile_module(module: nn.Module, input_shape: tuple[int, ...], bias_ops: bool = False) -> Profile:
    """Run ``module`` once on a zero input of ``input_shape`` (its own device) and count it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    layers: list[Layer] = []
    calls: dict[str, int] = defaultdict(int)
    plain_macs = 0  # without thop's bias ops, to check against FlopCounterMode

    def hook(mod: nn.Module, inputs: Any, output: Any, *, name: str) -> None:
        nonlocal plain_macs
        out = _first_tensor(output)
        macs = layer_macs(mod, out) if out is not None else 0
        plain_macs += macs
        if bias_ops and macs and getattr(mod, "bias", None) is not None:
            macs += out.numel()
        weights = sum(p.numel() for p in mod.parameters())
        calls[name] += 1  # a module called again (a shared ReLU) gets a row per call, params once
        layers.append(
            Layer(
                name=f"{name}#{calls[name]}" if calls[name] > 1 else name,
                kind=layer_kind(mod),
                out_shape=list(out.shape) if out is not None else [],
                params=weights if calls[name] == 1 else 0,
                macs=macs,
                memory_access=_numel(inputs) + _numel(output) + weights,
            )
        )

    leaves = [
        (name or type(mod).__name__, mod)  # a bare layer is its own (unnamed) root
        for name, mod in module.named_modules()
        if not any(mod.children()) and not isinstance(mod, _classes()["no-op"])
    ]
    handles = [mod.register_forward_hook(functools.partial(hook, name=name)) for name, mod in leaves]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()

    params = sum(p.numel() for p in module.parameters())
    bias = sum(layer.macs for layer in layers) - plain_macs if bias_ops else 0
    macs = counter.get_total_flops() // 2 + bias
    _add_unattributed(layers, params, macs)
    return Profile(layers, params, macs, sum(layer.memory_access for layer in layers), device.type)


def _add_unattributed(layers: list[Layer], params: int, macs: int) -> None:
    # Parameters used functionally or MACs of functional matmuls: shown, never silently dropped.
    missing_params = params - sum(layer.params for layer in layers)
    missing_macs = macs - sum(layer.macs for layer in layers)
    if missing_params or missing_macs:
        layers.append(Layer(UNATTRIBUTED, "other", [], missing_params, missing_macs, 0))


def count_module(module: nn.Module, input_shape: tuple[int, ...], bias_ops: bool = False) -> tuple[int, int]:
    """(params, MACs) of a module; ``bias_ops=True`` reproduces thop's old bias-inclusive count.

    ``Conv2d(6, 30, 3)`` on a 1x6x112x112 input: 1650 params and 19,602,000 MACs; thop printed
    19.96M because it added one op per output element for the bias (30 * 110 * 110 = 363,000).
    """
    result = profile_module(module, input_shape, bias_ops)
    return result.params, result.macs


# --- zoo models --------------------------------------------------------------------------------


def profile_model(
    name: str,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
) -> Profile:
    """Build a zoo network (on ``meta`` if it can be, else CPU) and profile it at batch 1."""
    from edgekit.zoo import get_entry

    entry = get_entry(name)
    side = resolution or entry.resolution
    shape = (1, 3, side, side)
    try:
        return profile_module(_build(entry.name, width, groups, meta=True), shape)
    except EdgekitError:
        raise
    except Exception:  # some builders or ops do real arithmetic on weights: count on CPU instead
        pass
    try:
        return profile_module(_build(entry.name, width, groups, meta=False), shape)
    except RuntimeError as exc:
        if side == entry.resolution:
            raise
        first_line = str(exc).splitlines()[0]
        raise UsageError(
            f"{entry.name} cannot run at resolution {side}: {first_line}",
            f"use a larger --resolution (default {entry.resolution})",
        ) from exc


def _build(name: str, width: float | None, groups: int | None, meta: bool) -> nn.Module:
    import torch

    from edgekit.zoo import create_model

    with torch.device("meta" if meta else "cpu"):
        return create_model(name, width=width, groups=groups)


def model_info(
    name: str,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
) -> dict[str, Any]:
    """Per-layer table plus totals and a per-kind summary, as plain JSON-ready data."""
    from edgekit.zoo import get_entry

    if resolution is not None and not 16 <= resolution <= 2048:
        raise UsageError(f"resolution {resolution} is out of range", "use a side between 16 and 2048 pixels")
    entry = get_entry(name)
    result = profile_model(entry.name, width=width, resolution=resolution, groups=groups)
    options = {**entry.defaults, **({"groups": groups} if groups is not None else {})}
    return {
        "model": entry.name,
        "width": width if width is not None else entry.defaults.get("width", 1.0),
        "resolution": resolution or entry.resolution,
        "options": options,
        "params": result.params,
        "macs": result.macs,
        "mac_memory": result.mac_memory,
        "layers": [asdict(layer) for layer in result.layers],
        "by_kind": by_kind(result),
        "counted_on": result.device,
        "convention": CONVENTION,
    }


def by_kind(result: Profile) -> dict[str, dict[str, Any]]:
    """MACs, params, memory access and the MAC share of each layer kind."""
    totals: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"layers": 0, "macs": 0, "params": 0, "memory_access": 0}
    )
    for layer in result.layers:
        kind = UNATTRIBUTED if layer.name == UNATTRIBUTED else layer.kind
        row = totals[kind]
        row["layers"] += 1
        row["macs"] += layer.macs
        row["params"] += layer.params
        row["memory_access"] += layer.memory_access
    order = {kind: i for i, kind in enumerate((*KINDS, UNATTRIBUTED))}
    return {
        kind: {**row, "share": round(row["macs"] / result.macs, 4) if result.macs else 0.0}
        for kind, row in sorted(totals.items(), key=lambda item: order[item[0]])
    }


def zoo_summary() -> list[dict[str, Any]]:
    """One row per zoo model at its default resolution and width."""
    from edgekit.zoo import get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        result = profile_model(name)
        rows.append(
            {
                "name": name,
                "family": entry.family,
                "params": result.params,
                "macs": result.macs,
                "resolution": entry.resolution,
                "pretrained": entry.pretrained is not None,
                "paper": entry.paper,
                "aliases": list(entry.aliases),
                "options": {key: list(values) for key, values in entry.options.items()},
            }
        )
    return rows


@functools.cache
def _classes() -> dict[str, tuple[type, ...]]:
    from torch import nn
    from torch.nn.modules import dropout, pooling

    return {
        "act": (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.PReLU,
            nn.ELU,
            nn.SELU,
            nn.GELU,
            nn.SiLU,
            nn.Mish,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.Sigmoid,
            nn.Tanh,
            nn.Softmax,
            nn.Hardtanh,
        ),
        "pool": (
            pooling._MaxPoolNd,
            pooling._AvgPoolNd,
            pooling._AdaptiveAvgPoolNd,
            pooling._AdaptiveMaxPoolNd,
        ),
        # No-ops at inference: no row in the table.
        "no-op": (nn.Identity, dropout._DropoutNd, nn.Flatten),
    }
