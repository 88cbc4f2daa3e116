"""Why depthwise layers degrade under low precision: per-layer analysis and the end-to-end check.

``analyze(name, ...)`` (the ``edgekit analyze`` command) looks at the network as it is deployed
(BatchNorm folded into the convolutions) and, per conv/linear layer, measures

- the spread of the per-output-channel weight ranges (max |w| of each channel: max/min ratio and
  how many channels lie below 1/100 of the largest);
- the weight SQNR of symmetric ``bits`` quantisation per tensor and per channel;
- the sensitivity: the SQNR of the network's logits on real images when only this layer's weights
  are quantised (everything else float), per tensor and per channel;

and flags the layers that break, with the reason. ``end_to_end`` then exports real int8 files
(ONNX Runtime QDQ and LiteRT) for the configurations of :data:`CONFIGS` and measures top-1 and
top-1 agreement with the float model on the same images.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError, UsageError

KINDS = ("standard", "depthwise", "pointwise", "group", "linear")
SENSITIVITY_IMAGES = 32  # images for the per-layer sensitivity (2 x layers forward passes)
WEIGHT_MARGIN_DB = 6.0  # flag: per-tensor weight SQNR this far below the network's median (4x the noise)
OUTPUT_MARGIN_DB = 10.0  # flag: logits SQNR with this layer alone quantised, this far below the median
SPREAD_FLOOR = 100.0  # "channels below 1/100 of the largest"


# --- inputs -------------------------------------------------------------------------------------


def load_model(name: str, pretrained: bool = False) -> tuple[Any, Any]:
    """The zoo network (eval mode) and its preprocessing spec."""
    from calibration.preprocess import PreprocessSpec
    from edgekit.zoo import create_model, get_entry

    entry = get_entry(name)
    model = create_model(name, pretrained=pretrained)
    spec = PreprocessSpec(resolution=entry.resolution, resize=entry.resize, mean=entry.mean, std=entry.std)
    return model, spec


def resize_spec(spec: Any, resolution: int | None) -> Any:
    """The same preprocessing at another input side (small resolutions for quick runs)."""
    from dataclasses import replace

    if resolution is None:
        return spec
    return replace(spec, resolution=resolution, resize=int(round(resolution * spec.resize / spec.resolution)))


def load_images(data: str | None, spec: Any, limit: int | None) -> tuple[np.ndarray, list[int] | None, str]:
    """NCHW batch, labels (None without an ImageNet ImageFolder) and a description of the source."""
    from calibration import sources

    if data is None:
        photos = len(sources.builtin_photos())
        if photos == 0:
            raise DataError("no built-in photographs found", "pass --data with an image folder")
        x = sources.builtin_tensors(spec, limit or 64, seed=0)
        return x, None, f"built-in photographs ({photos} scikit-image photos, {len(x)} crops)"
    pairs = sources.labelled_images(data)
    if limit:
        pairs = pairs[:limit] if limit >= len(pairs) else [pairs[i] for i in _spread_index(len(pairs), limit)]
    x, kept = sources.load_images([p for p, _ in pairs], spec)
    table = dict(pairs)
    labels = [table[p] for p in kept]
    return x, (labels if all(lab is not None for lab in labels) else None), f"{data} ({len(x)} images)"


def _spread_index(n: int, k: int) -> list[int]:
    # Evenly spaced picks over the sorted folder, so a small --limit still covers many classes.
    return sorted({int(i) for i in np.linspace(0, n - 1, k)})


# --- per-layer statistics -----------------------------------------------------------------------


def layer_kind(module: Any) -> str:
    """standard / depthwise / pointwise / group / linear."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups == 1:
        return "pointwise" if math.prod(module.kernel_size) == 1 else "standard"
    return "depthwise" if module.groups == module.in_channels else "group"


def weight_stats(name: str, module: Any, bits: int) -> dict[str, Any]:
    """Range spread and per-tensor / per-channel weight SQNR of one layer."""
    from calibration.equalize import output_ranges
    from calibration.fakequant import quantize_weight, sqnr_db

    w = module.weight.detach()
    ranges = output_ranges(w)
    top = float(ranges.max())
    smallest = float(ranges.min())
    per_tensor = sqnr_db(w, quantize_weight(w, bits, per_channel=False))
    per_channel = sqnr_db(w, quantize_weight(w, bits, per_channel=True))
    return {
        "name": name,
        "kind": layer_kind(module),
        "shape": list(w.shape),
        "channels": int(w.shape[0]),
        "range_max": top,
        "range_spread": top / smallest if smallest > 0 else math.inf,
        "channels_below_1pct": int((ranges < top / SPREAD_FLOOR).sum()),
        "weight_sqnr_per_tensor": per_tensor,
        "weight_sqnr_per_channel": per_channel,
        "per_channel_gain": per_channel - per_tensor,
    }


def sensitivity(model: Any, x: np.ndarray, bits: int) -> dict[str, tuple[float, float]]:
    """Logits SQNR when only one layer's weights are quantised: {layer: (per-tensor, per-channel)}."""
    import torch

    from calibration.fakequant import quant_layers, quantize_weight, sqnr_db

    inputs = torch.from_numpy(x)
    result = {}
    with torch.no_grad():
        reference = model(inputs)
        for name, module in quant_layers(model):
            original = module.weight.detach().clone()
            scores = []
            for per_channel in (False, True):
                module.weight.copy_(quantize_weight(original, bits, per_channel))
                scores.append(sqnr_db(reference, model(inputs)))
            module.weight.copy_(original)
            result[name] = (scores[0], scores[1])
    return result


def flag_layers(layers: list[dict[str, Any]]) -> None:
    """Adds ``flag`` (None or the reason) to each layer, relative to the network's medians."""
    w_median = statistics.median(layer["weight_sqnr_per_tensor"] for layer in layers)
    outs = [layer["output_sqnr_per_tensor"] for layer in layers if layer.get("output_sqnr_per_tensor") is not None]
    o_median = statistics.median(outs) if outs else None
    for layer in layers:
        reasons = []
        if layer["weight_sqnr_per_tensor"] < w_median - WEIGHT_MARGIN_DB:
            reasons.append(
                f"per-tensor weight SQNR {layer['weight_sqnr_per_tensor']:.1f} dB < {w_median - WEIGHT_MARGIN_DB:.1f}"
                f" (median - {WEIGHT_MARGIN_DB:g}): channel ranges differ {_fmt_spread(layer['range_spread'])}"
            )
        out = layer.get("output_sqnr_per_tensor")
        if o_median is not None and out is not None and out < o_median - OUTPUT_MARGIN_DB:
            reasons.append(f"alone it drops the logits SQNR to {out:.1f} dB (median {o_median:.1f})")
        layer["flag"] = "; ".join(reasons) or None


def _fmt_spread(spread: float) -> str:
    return "inf (a channel is all zero)" if math.isinf(spread) else f"{spread:,.0f}x"


def summarize_by_kind(layers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians per kind: the table that shows whether depthwise layers are the weak spot."""

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        return statistics.median(values) if values else None

    summary = {}
    for kind in KINDS:
        rows = [r for r in layers if r["kind"] == kind]
        if not rows:
            continue
        finite = [r["range_spread"] for r in rows if math.isfinite(r["range_spread"])]
        summary[kind] = {
            "layers": len(rows),
            "weight_sqnr_per_tensor": med(rows, "weight_sqnr_per_tensor"),
            "weight_sqnr_per_channel": med(rows, "weight_sqnr_per_channel"),
            "per_channel_gain": med(rows, "per_channel_gain"),
            "range_spread_median": med(rows, "range_spread"),
            "range_spread_max": max(finite) if finite else None,
            "output_sqnr_per_tensor": med(rows, "output_sqnr_per_tensor"),
            "output_sqnr_per_channel": med(rows, "output_sqnr_per_channel"),
            "flagged": sum(1 for r in rows if r.get("flag")),
        }
    return summary


def analyze_layers(model: Any, x: np.ndarray | None, bits: int) -> list[dict[str, Any]]:
    """Per-layer statistics of a BN-folded model (``x``: images for the sensitivity, or None)."""
    from calibration.fakequant import quant_layers

    layers = [weight_stats(name, module, bits) for name, module in quant_layers(model)]
    if x is not None:
        scores = sensitivity(model, x[:SENSITIVITY_IMAGES], bits)
        for layer in layers:
            layer["output_sqnr_per_tensor"], layer["output_sqnr_per_channel"] = scores[layer["name"]]
    flag_layers(layers)
    return layers


def worst_layer(model: Any, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The layer with the lowest per-tensor weight SQNR and its per-channel ranges (for the plot)."""
    from calibration.equalize import output_ranges

    worst = min(layers, key=lambda r: r["weight_sqnr_per_tensor"])
    ranges = output_ranges(model.get_submodule(worst["name"]).weight)
    return {"name": worst["name"], "kind": worst["kind"], "ranges": [float(v) for v in ranges]}


# --- the command --------------------------------------------------------------------------------


def analyze(
    name: str,
    *,
    pretrained: bool = False,
    bits: int = 8,
    data: str | None = None,
    limit: int | None = None,
    resolution: int | None = None,
    end_to_end: bool = True,
    runtimes: list[str] | None = None,
    plot: str | None = None,
    work_dir: str | None = None,
) -> dict[str, Any]:
    """Per-layer analysis at ``bits`` and (``end_to_end``) the real int8 runtimes table."""
    from calibration.equalize import fold_batchnorm

    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise UsageError(f"--bits {bits} is not supported", "use 8, 6 or 4 (2-8 work)")
    model, spec = load_model(name, pretrained)
    spec = resize_spec(spec, resolution)
    x, labels, source = load_images(data, spec, limit)
    folded = fold_batchnorm(copy.deepcopy(model))
    layers = analyze_layers(folded, x, bits)
    result: dict[str, Any] = {
        "model": name,
        "pretrained": pretrained,
        "bits": bits,
        "resolution": spec.resolution,
        "images": source,
        "sensitivity_images": min(len(x), SENSITIVITY_IMAGES),
        "method": f"BN folded; symmetric {bits}-bit weights ([-{2 ** (bits - 1) - 1}, {2 ** (bits - 1) - 1}]), "
        "per tensor vs per output channel; sensitivity = logits SQNR in PyTorch with only that layer quantised",
        "layers": layers,
        "by_kind": summarize_by_kind(layers),
        "worst_layer": worst_layer(folded, layers),
        "end_to_end": [],
    }
    if end_to_end:
        from edgekit.analysis.endtoend import run_configs

        result["end_to_end"] = run_configs(name, model, spec, x, labels, runtimes=runtimes, work_dir=work_dir)
    if plot:
        from edgekit.analysis.plots import plot_analysis

        result["plot"] = str(plot_analysis(result, Path(plot)))
    return result
