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

from calibration.sources import DEFAULT_SAMPLES
from edgekit.counting import layer_kind
from edgekit.errors import UsageError

KINDS = ("conv", "depthwise", "pointwise", "group conv", "linear")  # edgekit.counting's names
SENSITIVITY_IMAGES = 8  # images for the per-layer sensitivity (2 x layers forward passes)
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
    return replace(spec, resolution=resolution, resize=round(resolution * spec.resize / spec.resolution))


def load_images(data: str | None, spec: Any, limit: int | None) -> tuple[np.ndarray, list[int] | None, str]:
    """NCHW batch, labels (None without an ImageNet ImageFolder) and a description of the source:
    the images `edgekit eval` takes for the same arguments."""
    from edgekit.evaluate import load_eval_images

    x, labels, _, source = load_eval_images(spec, data, limit)
    return x, None if labels is None else [int(v) for v in labels], f"{source} ({len(x)} images)"


# --- per-layer statistics -----------------------------------------------------------------------


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
        "kind": layer_kind(module),  # edgekit.counting's
        "shape": list(w.shape),
        "channels": int(w.shape[0]),
        "range_max": top,
        "range_spread": top / smallest if smallest > 0 else None,  # None: a channel is all zero
        "zero_channels": int((ranges == 0).sum()),
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
    outs = [r["output_sqnr_per_tensor"] for r in layers if r.get("output_sqnr_per_tensor") is not None]
    o_median = statistics.median(outs) if outs else None
    for layer in layers:
        reasons = []
        weight_sqnr, limit = layer["weight_sqnr_per_tensor"], w_median - WEIGHT_MARGIN_DB
        if weight_sqnr < limit:
            reasons.append(
                f"per-tensor weight SQNR {weight_sqnr:.1f} dB < {limit:.1f} (median - {WEIGHT_MARGIN_DB:g}): "
                f"channel ranges differ {_fmt_spread(layer['range_spread'])}"
            )
        out = layer.get("output_sqnr_per_tensor")
        if o_median is not None and out is not None and out < o_median - OUTPUT_MARGIN_DB:
            reasons.append(f"alone it drops the logits SQNR to {out:.1f} dB (median {o_median:.1f})")
        layer["flag"] = "; ".join(reasons) or None


def _fmt_spread(spread: float | None) -> str:
    return "without bound (a channel is all zero)" if spread is None else f"{spread:,.0f}x"


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
        finite = [r["range_spread"] for r in rows if r["range_spread"] is not None]
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
    configs: list[str] | None = None,
    calib: str | None = None,
    plot: str | None = None,
    work_dir: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Per-layer analysis at ``bits`` and (``end_to_end``) the real int8 runtimes table."""
    from exporters.rewrites import fold_batchnorm

    levels = 2 ** (bits - 1) - 1
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise UsageError(f"--bits {bits} is not supported", "use 8, 6 or 4 (2-8 work)")
    configs = check_configs(configs) if end_to_end else []
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
        "method": f"BN folded; symmetric {bits}-bit weights ([-{levels}, {levels}]), per tensor vs per "
        "output channel; sensitivity = logits SQNR in PyTorch (float activations), only that layer quantised",
        "layers": layers,
        "by_kind": summarize_by_kind(layers),
        "worst_layer": worst_layer(folded, layers),
        "end_to_end": [],
    }
    if end_to_end:
        calib_set = calibration_tensors(calib, spec)
        result["calibration"] = calib_set.source
        result["end_to_end"] = run_configs(
            model,
            spec,
            x,
            labels,
            calib_set,
            configs=configs,
            runtimes=runtimes,
            work_dir=work_dir,
            workers=workers,
            ray_address=ray_address,
        )
        result["end_to_end_method"] = (
            f"real files: ONNX Runtime QDQ and LiteRT (litert-torch PT2E) int8, 1 thread; top-1/5 on "
            f"{source}; agreement = same top-1 as PyTorch float; calibration: {calib_set.source}; "
            "wNa8 = weights fake-quantised to N bits per channel in PyTorch, then exported as int8"
        )
    if plot:
        result["plot"] = str(plot_analysis(result, Path(plot)))
    return result


# --- end to end on the real runtimes ------------------------------------------------------------

# name -> (weight bits, per channel, remedies); None bits = the float files. Remedies, as the
# export's flags: "" none (`--no-equalize-streams --no-bias-correct`), "default" what
# `edgekit export --int8` ships (stream equalisation + bias correction), "cle" `--equalize` on top
# (cross-layer equalisation of conv pairs first, then the defaults), "cle-gptq" `--equalize --gptq`
# (the same, the weights rounded by GPTQ instead of to the nearest grid point).
CONFIGS: dict[str, tuple[int | None, bool, str]] = {
    "float": (None, True, ""),
    "int8-per-tensor": (8, False, ""),
    "int8-per-channel": (8, True, ""),
    "int8-per-tensor-cle": (8, False, "cle"),
    "int8-per-channel-cle": (8, True, "cle"),
    "w6a8-per-channel": (6, True, ""),
    "w4a8-per-channel": (4, True, ""),
    # The export's default, and where the per-tensor collapse appears and what equalisation does.
    "int8-per-channel-default": (8, True, "default"),
    "w6a8-per-tensor": (6, False, ""),
    "w6a8-per-tensor-cle": (6, False, "cle"),
    "w4a8-per-tensor": (4, False, ""),
    "w4a8-per-tensor-cle": (4, False, "cle"),
    "w4a8-per-channel-cle": (4, True, "cle"),
    # Below 8 bits, what equalisation leaves is rounding noise: GPTQ's rounding.
    "w6a8-per-tensor-cle-gptq": (6, False, "cle-gptq"),
    "w4a8-per-channel-cle-gptq": (4, True, "cle-gptq"),
    "int8-per-tensor-cle-gptq": (8, False, "cle-gptq"),
}
DEFAULT_RUNTIMES = ("onnxruntime", "litert")
CALIB_SAMPLES = DEFAULT_SAMPLES  # the export's default: the rows describe what it ships


def check_configs(configs: list[str] | None) -> list[str]:
    """The configurations asked for (all by default); unknown names are a usage error."""
    unknown = [c for c in configs or () if c not in CONFIGS]
    if unknown:
        raise UsageError(f"unknown configuration {', '.join(unknown)}", f"use some of {', '.join(CONFIGS)}")
    return list(configs or CONFIGS)


def calibration_tensors(calib: str | None, spec: Any) -> Any:
    """The activation-range (and bias-correction) tensors: ``--calib``, built-in photos by default."""
    from calibration.sources import calibration_set

    return calibration_set(calib, spec, CALIB_SAMPLES, seed=0)


# The export options each remedy label stands for.
REMEDY_OPTIONS = {
    "": {"equalize": False, "equalize_streams": False, "bias_correct": False},
    "default": {},
    "cle": {"equalize": True},
    "cle-gptq": {"equalize": True, "gptq": True},
}


def quant_config(config: str) -> Any:
    """The export's QuantConfig a row stands for (what `edgekit export --int8 ...` would use)."""
    from calibration.config import QuantConfig

    bits, per_channel, remedies = CONFIGS[config]
    return QuantConfig(per_tensor=not per_channel, weight_bits=bits or 8, **REMEDY_OPTIONS[remedies])


def row_formats(config: str, runtimes: list[str]) -> list[Any]:
    """The registry's formats a row writes: float32 or int8, one per engine asked for."""
    from edgekit import formats

    precision = "fp32" if CONFIGS[config][0] is None else "int8"
    return [
        f
        for f in formats.registry().values()
        if f.engine in runtimes and f.precision == precision and f.name != formats.REFERENCE
    ]


def prepare_models(model: Any, spec: Any, config: str, calib: Any, runtimes: list[str]) -> dict[str, Any]:
    """{format: (network as the row deploys it, int8 request)}: the export's int8 step
    (calibration.int8.prepare) with the row's options; the float row writes ``model`` itself."""
    from calibration import int8

    chosen = row_formats(config, runtimes)
    if CONFIGS[config][0] is None:
        return {f.name: (model, None) for f in chosen}
    return int8.prepare(model, spec, quant_config(config), chosen, calib=calib).requests


def write_artifacts(
    model: Any, spec: Any, config: str, calib: Any, folder: Path, runtimes: list[str]
) -> dict[str, tuple[Path, Any]]:
    """The files of one row, {engine: (path, format)}, written by the formats' own writers."""
    import torch

    from edgekit import formats
    from edgekit.formats import WriteRequest

    folder.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(calib.tensors[:1])
    files = {}
    for name, (net, request) in prepare_models(model, spec, config, calib, runtimes).items():
        fmt = formats.get(name)
        source = None
        if fmt.source:  # a quantiser that reads its float file when the graph did not change
            source = folder / formats.get(fmt.source).filename
            formats.get(fmt.source).load_writer()(WriteRequest(model, example, source))
        fmt.load_writer()(WriteRequest(net, example, folder / fmt.filename, source, int8=request))
        files[fmt.engine] = (folder / fmt.filename, fmt)
    return files


def accuracy(logits: np.ndarray, labels: list[int] | None, reference: np.ndarray) -> dict[str, float | None]:
    """top-1 / top-5 (None without labels) and top-1 agreement with the float predictions, in %."""
    top5 = np.argsort(-logits, axis=1)[:, :5]
    agreement = float(np.mean(top5[:, 0] == reference) * 100)
    if labels is None:
        return {"top1": None, "top5": None, "agreement_top1": agreement}
    y = np.asarray(labels)
    return {
        "top1": float(np.mean(top5[:, 0] == y) * 100),
        "top5": float(np.mean((top5 == y[:, None]).any(axis=1)) * 100),
        "agreement_top1": agreement,
    }


def run_configs(
    model: Any,
    spec: Any,
    x: np.ndarray,
    labels: list[int] | None,
    calib: Any,
    *,
    configs: list[str] | None = None,
    runtimes: list[str] | None = None,
    work_dir: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (configuration, runtime): real files, real engines; errors become a row note.
    ``calib``: the calibration set (calibration.sources.CalibrationSet) every row shares. With
    ``workers``/``ray_address`` the configurations run in parallel as Ray tasks (edgekit.scale)."""
    import torch

    configs = check_configs(configs)
    runtimes = list(runtimes or DEFAULT_RUNTIMES)
    with torch.no_grad():  # in chunks: a whole 224 px batch of hundreds of images needs gigabytes
        chunks = [model(torch.from_numpy(x[i : i + 32])).numpy() for i in range(0, len(x), 32)]
    float_logits = np.concatenate(chunks)
    reference = float_logits.argmax(axis=1)
    rows = [{"config": "float", "runtime": "torch", **accuracy(float_logits, labels, reference)}]
    shared = {"model": model, "spec": spec, "x": x, "labels": labels, "reference": reference, "calib": calib}
    shared.update(runtimes=runtimes, root=Path(work_dir) if work_dir else None)
    items = [{"config": config} for config in configs]
    if workers is not None or ray_address is not None:  # one Ray task per configuration
        from edgekit import scale

        per_config = scale.map_tasks(config_rows, items, shared, workers, ray_address, "analyze")
    else:
        per_config = [config_rows(**shared, **item) for item in items]
    return rows + [row for part in per_config for row in part]


def config_rows(
    model: Any,
    spec: Any,
    x: np.ndarray,
    labels: list[int] | None,
    reference: np.ndarray,
    calib: Any,
    runtimes: list[str],
    root: Path | None,
    config: str,
) -> list[dict[str, Any]]:
    """The rows of one configuration: its files written (under ``root``, else a temp folder) and run."""
    import tempfile

    from edgekit.errors import EdgekitError
    from runtimes import run_file

    with tempfile.TemporaryDirectory(prefix="edgekit-analyze-") as tmp:
        try:
            files = write_artifacts(model, spec, config, calib, (root or Path(tmp)) / config, runtimes)
        except EdgekitError as exc:
            none = {"top1": None, "top5": None, "agreement_top1": None, "error": exc.message}
            return [{"config": config, "runtime": rt, **none} for rt in runtimes]
        rows = []
        for runtime, (path, fmt) in files.items():
            try:
                scores = accuracy(run_file(path, x, fmt.layout, runtime), labels, reference)
            except EdgekitError as exc:
                scores = {"top1": None, "top5": None, "agreement_top1": None, "error": exc.message}
            rows.append({"config": config, "runtime": runtime, **scores})
    return rows


# --- plots --------------------------------------------------------------------------------------

KIND_COLORS = {
    "conv": "tab:gray",
    "depthwise": "tab:red",
    "pointwise": "tab:blue",
    "group conv": "tab:purple",
    "linear": "tab:green",
}


def plot_sqnr(result: dict[str, Any], ax: Any) -> None:
    """Per-tensor (bars) and per-channel (dots) weight SQNR by layer, coloured by kind."""
    layers = result["layers"]
    index = range(len(layers))
    colors = [KIND_COLORS[layer["kind"]] for layer in layers]
    ax.bar(index, [layer["weight_sqnr_per_tensor"] for layer in layers], color=colors, width=0.8)
    ax.scatter(
        index,
        [layer["weight_sqnr_per_channel"] for layer in layers],
        c=colors,
        marker="o",
        s=14,
        edgecolors="black",
        linewidths=0.4,
        zorder=3,
    )
    from matplotlib.patches import Patch

    present = [kind for kind in KIND_COLORS if any(layer["kind"] == kind for layer in layers)]
    ax.legend(
        handles=[Patch(color=KIND_COLORS[k], label=k) for k in present],
        fontsize=8,
        ncol=len(present),
        loc="lower right",
    )
    ax.set_xlabel("layer (network order)")
    ax.set_ylabel(f"weight SQNR, {result['bits']}-bit (dB)")
    ax.set_title(f"{result['model']}: per-tensor (bars) vs per-channel (dots), BN folded")


def plot_ranges(result: dict[str, Any], ax: Any) -> None:
    """Per-output-channel max |w| of the layer with the worst per-tensor SQNR (log scale)."""
    worst = result["worst_layer"]
    ranges = worst["ranges"]
    ax.bar(range(len(ranges)), ranges, color=KIND_COLORS[worst["kind"]], width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("output channel")
    ax.set_ylabel("max |w| (BN folded)")
    spread = max(ranges) / max(min(ranges), 1e-30)
    ax.set_title(f"worst layer {worst['name']} ({worst['kind']}): channel ranges differ {spread:,.0f}x")


def plot_analysis(result: dict[str, Any], path: Path, panels: tuple[str, ...] = ("sqnr", "ranges")) -> Path:
    """Write the chosen panels (``sqnr``, ``ranges``) as one PNG/SVG/PDF at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw = {"sqnr": plot_sqnr, "ranges": plot_ranges}
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for panel, ax in zip(panels, axes[:, 0], strict=True):
        draw[panel](result, ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
