"""The int8 step: one calibration set, the remedies on each format's weight grid, one request per file.

    prepared = prepare(model, spec, config, formats)     # formats: the int8 Formats to write
    for fmt in formats:
        model, request = prepared.requests[fmt.name]     # what that format's writer takes
    prepared.record                                      # manifest["calibration"]

Every int8 format is calibrated on the same tensors with the same preprocessing, so the formats
can be compared; the float model is remedied once (equalisation), then per weight grid (GPTQ and
bias correction are grid-dependent: ONNX Runtime's files keep same-sign weight pairs within 128,
LiteRT's do not), then rewritten for the int8 fast paths. Writing and verifying the files is the
pipeline's job.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.config import QuantConfig
from calibration.grid import WeightGrid
from calibration.preprocess import PreprocessSpec
from calibration.sources import CalibrationSet, calibration_set
from calibration.threads import one_thread


@dataclass
class Int8Request:
    """What an int8 writer needs beside the model: the calibration tensors and the grid."""

    tensors: np.ndarray  # NCHW float32, preprocessed
    method: str
    grid: WeightGrid
    symmetric_activations: bool
    changed: bool  # the float graph differs from the float file (remedies, rewrites): re-export it
    levels: dict[str, list[int]] | None  # the grid GPTQ/bias correction rounded onto, by weight name
    check_batch: np.ndarray | None = None  # real images for the writer's own exactness checks


@dataclass
class Prepared:
    requests: dict[str, tuple[Any, Int8Request]]  # format name -> (model to write, request)
    record: dict[str, Any]  # manifest["calibration"]


def prepare(
    model: Any,
    spec: PreprocessSpec,
    config: QuantConfig,
    formats: list[Any],
    check_batch: np.ndarray | None = None,
    calib: CalibrationSet | None = None,
) -> Prepared:
    """Calibration set (``calib``, or the one ``config`` names), remedies per grid, int8 fast-path
    rewrites; one request per format."""
    from calibration.fakequant import levels_by_weight
    from exporters.rewrites import int8_friendly_copy

    if calib is None:
        calib = calibration_set(config.calib, spec, config.calib_samples, config.seed, config.skip_bad_images)
    grids = {
        f.name: dataclasses.replace(f.weight_grid(config.per_channel), bits=config.weight_bits)
        for f in formats
    }
    models, remedies = apply_remedies(model, calib.tensors, config, grids)
    folded = any(config.remedies().values()) or config.weight_bits < 8  # a BN-folded, changed copy
    requests, rewrites = {}, {"rewritten": {}}
    for fmt in formats:
        friendly, rewrites = int8_friendly_copy(models[fmt.name])
        request = Int8Request(
            tensors=calib.tensors,
            method=config.calib_method,
            grid=grids[fmt.name],
            symmetric_activations=config.symmetric_activations,
            changed=folded or bool(rewrites["rewritten"]),
            # Weight names are the exporter's; levels only from a BN-folded model (as exported).
            levels=levels_by_weight(friendly, grids[fmt.name]) if folded else None,
            check_batch=check_batch,
        )
        requests[fmt.name] = (friendly, request)
    record = {
        "source": calib.source,
        "samples": len(calib.tensors),
        "method": config.calib_method,
        "per_channel": config.per_channel,
        "symmetric_activations": config.symmetric_activations,
        "weight_bits": config.weight_bits,
        "seed": config.seed,
        "detail": calib.detail,
        "remedies": remedies,
        "rewrites": rewrites,
        "weight_grids": {name: grid.describe() for name, grid in grids.items()},
        "activation_ranges": {},
    }
    return Prepared(requests, record)


def apply_remedies(
    model: Any, tensors: np.ndarray, config: QuantConfig, grids: dict[str, WeightGrid]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Cross-layer and stream equalisation on a copy of the float model, then for each weight grid
    GPTQ rounding and bias correction (last: it corrects the final weights on the grid they will
    be rounded onto, or GPTQ's codes on it) and, below 8 bits, the weights put on that grid.
    Returns one model per key of ``grids`` (equal grids share one) and what each remedy changed."""
    asked = config.remedies()
    if not any(asked.values()) and config.weight_bits == 8:
        return dict.fromkeys(grids, model), []
    from calibration import equalize, layout

    model = layout.for_passes(copy.deepcopy(model).eval())
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
        models.update(dict.fromkeys(keys, layout.for_export(rounded_model)))
    return models, remedies


def _round_and_correct(
    model: Any, batches: list[np.ndarray], asked: dict[str, bool], grid: WeightGrid
) -> tuple[Any, list[dict[str, Any]]]:
    """GPTQ and bias correction for one weight grid, then the weights onto it below 8 bits; in place."""
    from calibration import equalize
    from calibration.fakequant import fake_quantize_weights_

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
    elif grid.bits < 8:
        fake_quantize_weights_(model, grid)
    return model, done


def _load_weights(model: Any, weights: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, w in weights.items():
            model.get_submodule(name).weight.copy_(w)


def merge_records(first: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    """Two lanes' calibration records as one (edgekit.lanes): the shared remedies (computed the
    same way in both) once, each grid's own ones, every format's grids and ranges (the module
    rewrites are the network's, the same in both)."""
    if first is None:
        return other
    merged = dict(first)
    merged["remedies"] = first["remedies"] + [r for r in other["remedies"] if r not in first["remedies"]]
    for key in ("weight_grids", "activation_ranges"):
        merged[key] = {**first[key], **other[key]}
    return merged


def rounded_ranges(ranges: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    """Activation ranges as the manifest records them (6 decimals)."""
    return {name: [round(float(lo), 6), round(float(hi), 6)] for name, (lo, hi) in ranges.items()}
