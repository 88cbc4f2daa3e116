"""The int8 step of an export: one calibration set, both quantisers, verified, in the manifest.

Called by the export pipeline with a staging folder that already holds the float files::

    quantize_all(stage_dir, manifest, model, options)

``options``: calib (None/'builtin' | folder | .npy | 'random'), calib_samples, calib_method,
per_tensor, symmetric_activations, skip_bad_images, equalize, equalize_streams, gptq, bias_correct
(None: the default of ``DEFAULT_REMEDIES``), seed. Writes
``model_int8.onnx`` / ``model_int8.tflite`` for the float formats present, their ``files`` entries
(with input/output quantisation and verification figures) and ``manifest["calibration"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from calibration.grid import WeightGrid
from calibration.preprocess import PreprocessSpec
from calibration.ranges import DEFAULT_METHOD, METHODS
from calibration.sources import calibration_set
from calibration.threads import one_thread
from edgekit.errors import UsageError
from edgekit.manifest import file_entry


def quantize_all(stage_dir: Path, manifest: dict[str, Any], model: Any, options: dict[str, Any]) -> None:
    """Write the int8 files of every float format in ``manifest["files"]`` (see module doc)."""
    stage_dir = Path(stage_dir)
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    method = options.get("calib_method") or DEFAULT_METHOD
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}", f"use one of {', '.join(METHODS)}")
    per_channel = not options.get("per_tensor", False)
    symmetric = bool(options.get("symmetric_activations", False))
    seed = int(options.get("seed") or 0)
    calib = calibration_set(
        options.get("calib"),
        spec,
        options.get("calib_samples"),
        seed,
        bool(options.get("skip_bad_images", False)),
    )
    files = manifest["files"]
    grids = format_grids([fmt for fmt in files], per_channel)
    models, remedies = apply_remedies(model, calib.tensors, options, grids)
    record: dict[str, Any] = {
        "source": calib.source,
        "samples": len(calib.tensors),
        "method": method,
        "per_channel": per_channel,
        "symmetric_activations": symmetric,
        "seed": seed,
        "detail": calib.detail,
        "remedies": remedies,
        "weight_grids": {fmt: grid.describe() for fmt, grid in grids.items()},
        "activation_ranges": {},
    }
    # int8 fast paths (exporters/rewrites.py): hard-swish/hard-sigmoid as ops with int8 kernels, on a copy
    from exporters.rewrites import int8_friendly_copy

    friendly = {fmt: int8_friendly_copy(m) for fmt, m in models.items()}
    record["rewrites"] = next(iter(friendly.values()))[1] if friendly else {"rewritten": {}}
    if "onnx-int8" in friendly:
        net = friendly["onnx-int8"][0]
        checks = _verification_inputs(net, spec)
        changed = bool(remedies) or bool(record["rewrites"]["rewritten"])
        record["activation_ranges"]["onnx"] = _onnx(
            stage_dir, files, net, calib.tensors, method, grids["onnx-int8"], symmetric, changed, checks
        )
    if "tflite-int8" in friendly:
        net = friendly["tflite-int8"][0]
        checks = _verification_inputs(net, spec)
        record["activation_ranges"]["tflite"] = _tflite(
            stage_dir, files, net, calib.tensors, method, per_channel, symmetric, checks
        )
    manifest["calibration"] = record


def format_grids(float_formats: list[str], per_channel: bool) -> dict[str, WeightGrid]:
    """The weight grid of each int8 file to write, keyed by its format: ONNX Runtime's x86 kernels
    without VNNI add weight pairs in int16 (calibration.grid), so its files keep them in range;
    XNNPACK widens before multiplying, so LiteRT's keep the full grid."""
    from calibration.onnx_int8 import ONNX_GRID

    grids = {}
    if "onnx-fp32" in float_formats:
        grids["onnx-int8"] = dataclasses.replace(ONNX_GRID, per_channel=per_channel)
    if "tflite-fp32" in float_formats:
        grids["tflite-int8"] = WeightGrid(bits=8, per_channel=per_channel)
    return grids


# Stream equalisation and bias correction are on unless switched off. Streams: the residual
# stream's few large channels set the per-tensor activation grid; balanced against the weights
# reading them (exact in float) logits SQNR +1 dB in both formats. Bias correction: removes the
# mean output shift the int8 weight grid puts on every layer (weights-only logits SQNR 21.5 ->
# 29.5 dB; +1 dB end to end). Pretrained MobileNetV2 per-channel; docs/int8.md. Cross-layer
# equalisation is opt-in: it helps per-tensor weights, not per-channel ones. GPTQ rounding is
# opt-in: it matters below 8 bits (per-tensor W6A8 after CLE: -4.4 -> -1.2 top-1, docs/depthwise.md)
# and costs a pass over the calibration set plus ~30 s at 224 px.
DEFAULT_REMEDIES = {"equalize": False, "equalize_streams": True, "gptq": False, "bias_correct": True}


def remedies_asked(options: dict[str, Any]) -> dict[str, bool]:
    """The remedies an export runs: the options given, the defaults for those left unset (None)."""
    return {
        name: bool(default if options.get(name) is None else options[name])
        for name, default in DEFAULT_REMEDIES.items()
    }


def apply_remedies(
    model: Any, tensors: np.ndarray, options: dict[str, Any], grids: dict[str, WeightGrid]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Cross-layer and stream equalisation on a copy of the float model, then for each weight grid
    GPTQ rounding and bias correction (last: it corrects the final weights on the grid they will
    be rounded onto, or GPTQ's codes on it), as asked. Returns one model per key of ``grids``
    (formats sharing a grid share the model) and what each remedy changed."""
    asked = remedies_asked(options)
    if not any(asked.values()):
        return dict.fromkeys(grids, model), []
    from calibration import equalize

    model = copy.deepcopy(model).eval()
    remedies = []
    batches = [tensors[i : i + 16] for i in range(0, len(tensors), 16)]
    if asked["equalize"]:
        remedies.append({"name": "cross_layer_equalize", **equalize.cross_layer_equalize(model)})
    # One thread: the scales and biases computed from data go into the files (the same bytes).
    if asked["equalize_streams"]:
        with one_thread():
            remedies.append({"name": "equalize_streams", **equalize.equalize_streams(model, batches)})
    equalize.fold_batchnorm(model)  # the weights the quantiser sees are the BN-folded ones
    by_grid: dict[WeightGrid, list[str]] = {}
    for key, grid in grids.items():
        by_grid.setdefault(grid, []).append(key)
    models = {}
    for grid, keys in by_grid.items():
        rounded_model, done = _round_and_correct(
            copy.deepcopy(model) if len(by_grid) > 1 else model, batches, asked, grid
        )
        remedies += [{**r, "formats": keys} for r in done]
        models.update(dict.fromkeys(keys, rounded_model))
    return models, remedies


def _round_and_correct(
    model: Any, batches: list[np.ndarray], asked: dict[str, bool], grid: WeightGrid
) -> tuple[Any, list[dict[str, Any]]]:
    """GPTQ and bias correction for one weight grid, in place."""
    from calibration import equalize

    done = []
    rounded = None
    if asked["gptq"]:
        from calibration.gptq import gptq_weights

        with one_thread():
            rounded, report = gptq_weights(model, batches, grid)
        done.append({"name": "gptq", **report})
    if asked["bias_correct"]:
        with one_thread():
            report = equalize.bias_correct(model, batches, grid, rounded)
        done.append({"name": "bias_correct", "grid": grid.describe(), **report})
    if rounded:
        _load_weights(model, rounded)
    return model, done


def _load_weights(model: Any, weights: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, w in weights.items():
            model.get_submodule(name).weight.copy_(w)


def _onnx(
    stage: Path,
    files: dict[str, Any],
    model: Any,
    tensors: np.ndarray,
    method: str,
    grid: WeightGrid,
    symmetric: bool,
    changed: bool,
    checks: dict[str, Any],
) -> dict[str, list[float]]:
    from calibration import onnx_int8
    from calibration.fakequant import levels_by_weight

    src = stage / files["onnx-fp32"]["path"]
    levels = None
    with tempfile.TemporaryDirectory(prefix="edgekit-remedied-") as tmp:
        if changed:  # the float graph changed: quantise a fresh export of the remedied model
            import torch

            from exporters import onnx as onnx_exporter

            src = Path(tmp) / "remedied.onnx"
            onnx_exporter.export(model, torch.from_numpy(tensors[:1]), src)
            levels = levels_by_weight(model, grid)  # the grid GPTQ and bias correction used
        info = onnx_int8.quantize_onnx(
            src,
            stage / "model_int8.onnx",
            tensors,
            method=method,
            grid=grid,
            levels=levels,
            symmetric_activations=symmetric,
        )
    path = stage / "model_int8.onnx"
    files["onnx-int8"] = _int8_entry(
        path,
        "NCHW",
        onnx_int8.io_quantisation(path),
        checks,
        quantizer="onnxruntime quantize_static (QDQ) with edgekit ranges and weight grid",
        weight_grid=grid.describe(),
        fused_ops=onnx_int8.fused_ops(path),
    )
    return _rounded(info["activation_ranges"])


def _tflite(
    stage: Path,
    files: dict[str, Any],
    model: Any,
    tensors: np.ndarray,
    method: str,
    per_channel: bool,
    symmetric: bool,
    checks: dict[str, Any],
) -> dict[str, list[float]]:
    from calibration import tflite_int8

    path = stage / "model_int8.tflite"
    info = tflite_int8.quantize_tflite(
        model, path, tensors, method=method, per_channel=per_channel, symmetric_activations=symmetric
    )
    files["tflite-int8"] = _int8_entry(
        path,
        "NHWC",
        tflite_int8.io_quantisation(path),
        checks,
        quantizer="litert-torch PT2E (full integer) with edgekit range observers",
    )
    return _rounded(info["activation_ranges"])


def _int8_entry(
    path: Path, layout: str, io: tuple[dict[str, Any], dict[str, Any]], checks: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The manifest entry of an int8 file: hashes, I/O scales, and its check against float."""
    fmt = "onnx-int8" if path.suffix == ".onnx" else "tflite-int8"
    inp, out = io
    return file_entry(
        path.parent,
        path.name,
        format=fmt,
        precision="int8",
        layout=layout,
        input=inp,
        output=out,
        **extra,
        verification=_verify(path, fmt, layout, checks),
    )


def _verification_inputs(model: Any, spec: PreprocessSpec) -> dict[str, Any]:
    from edgekit import verify

    inputs = verify.reference_inputs(spec)
    return {"inputs": inputs, "references": {k: verify.torch_logits(model, v) for k, v in inputs.items()}}


def _verify(path: Path, fmt: str, layout: str, checks: dict[str, Any]) -> dict[str, Any]:
    """int8 vs the PyTorch float model: figures recorded, no gate (the eval step judges accuracy)."""
    from edgekit import verify

    return verify.verify_file(path, fmt, "int8", layout, checks["inputs"], checks["references"])


def _rounded(ranges: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    return {name: [round(float(lo), 6), round(float(hi), 6)] for name, (lo, hi) in ranges.items()}
