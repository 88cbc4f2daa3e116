"""TFLite full-integer int8 through litert-torch's PT2E route (int8 weights, activations and I/O).

Why PT2E and not ai-edge-quantizer on the float .tflite: PT2E quantises the PyTorch graph the
float file came from, with the calibration tensors run through PyTorch (fast, batched), and
litert-torch lowers the result to int8 kernels with INT8 input/output. The activation observers
are :func:`calibration.ranges.range_observer` — the same range estimators and histogram code as
the ONNX file; the output observer keeps the largest logits unclipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from calibration.grid import INT8_GRID, WeightGrid
from calibration.pt2e import freeze_weight_observers, observed_ranges, output_observers
from calibration.ranges import DEFAULT_METHOD
from calibration.threads import one_thread
from edgekit.console import captured_output, quiet_native
from edgekit.errors import ExportError
from edgekit.formats import WriteRequest

QUANTIZER = "litert-torch PT2E (full integer) with edgekit range observers"


def weight_grid(per_channel: bool) -> WeightGrid:
    """The ``tflite-int8`` format's grid: XNNPACK widens before multiplying, no pair limit."""
    return dataclasses.replace(INT8_GRID, per_channel=per_channel)


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``tflite-int8`` writer: PT2E on the request's model, calibrated on its tensors."""
    from exporters.inspect_tflite import describe

    q = request.int8
    info = quantize_tflite(
        request.model,
        request.path,
        q.tensors,
        method=q.method,
        per_channel=q.grid.per_channel,
        symmetric_activations=q.symmetric_activations,
    )
    inp, out = io_quantisation(request.path)
    return {
        "input": inp,
        "output": out,
        "quantizer": QUANTIZER,
        "weight_grid": q.grid.describe(),
        **describe(request.path),
        "rewrites": info["rewrites"],
        "activation_ranges": info["activation_ranges"],
    }


def quantization_config(per_channel: bool, symmetric_activations: bool, method: str) -> Any:
    """litert-torch's int8 config with our range observer on the activations."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    from calibration.ranges import range_observer

    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    act = dataclasses.replace(
        config.input_activation,
        qscheme=torch.per_tensor_symmetric if symmetric_activations else torch.per_tensor_affine,
        # litert-torch's eps=2**-12 floors the scale; a randomly initialised network's logits
        # (~1e-8) would all land on one integer. A tiny floor keeps any non-empty range usable.
        observer_or_fake_quant_ctr=range_observer(method).with_args(eps=1e-12),
    )
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def channel_last(module: Any) -> Any:
    """The float export's NHWC wrapper, so the int8 file takes the same layout as the fp32 one."""
    import litert_torch

    return litert_torch.to_channel_last_io(module, args=[0]).eval()


CALIB_BATCH = 16  # images per calibration call: 2.4x faster than one at a time (MobileNetV3, 224 px)


def calibration_graph(module: Any, nhwc: Any) -> tuple[Any, int]:
    """The exported graph the observers run in, and how many images it takes a call.

    Exported with a symbolic batch, so the calibration runs 16 images a call (the Python cost of
    the observed graph is per call); litert-torch re-exports the converted graph with the float
    file's batch of 1. A network that does not export with a symbolic batch (a reshape that spells
    the batch out) is calibrated one image at a time, on a graph exported for batch 1.
    """
    import torch

    wrapped = channel_last(module)
    batch = torch.export.Dim("batch", min=1, max=max(CALIB_BATCH, 2))
    try:
        graph = torch.export.export(wrapped, (nhwc[:2],), dynamic_shapes=(({0: batch},),))
        return graph.module(), CALIB_BATCH
    except Exception:  # torch.export's errors for a batch it cannot keep symbolic vary by op
        return torch.export.export(wrapped, (nhwc[:1],)).module(), 1


def quantize_tflite(
    module: Any,
    dst: Path,
    tensors: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    per_channel: bool = True,
    symmetric_activations: bool = False,
) -> dict[str, Any]:
    """Calibrate ``module`` on ``tensors`` (NCHW float32) and write an int8 NHWC .tflite at ``dst``."""
    import torch

    # Noisy imports (absl, TF's oneDNN note, torchao): in a lane of its own this writer may be first
    with captured_output():
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    nhwc = torch.from_numpy(np.ascontiguousarray(tensors.transpose(0, 2, 3, 1)))
    sample = (nhwc[:1],)
    config = quantization_config(per_channel, symmetric_activations, method)
    # int8 fast path (exporters/rewrites.py): also quantise the residual adds/muls the stock annotators miss
    from calibration.annotations import fast_path_quantizer
    from exporters.rewrites import (
        GATHER_FOLD,
        avg_pools_as_depthwise,
        batch_norms_as_affine,
        gathers_into_convs,
        relus_through_concats,
        zero_padded_max_pools,
    )

    quantizer = fast_path_quantizer(config)
    try:
        # One thread (calibration.threads): the forward passes are a small part of this step.
        with one_thread():
            litert_torch.config.show_progress = False
            graph, step = calibration_graph(module, nhwc)
            rewrites = {
                GATHER_FOLD: gathers_into_convs(graph),
                "relu(cat) -> cat(relu)": relus_through_concats(graph),
                "max_pool2d(-inf pad) -> PAD(0) + max_pool2d": zero_padded_max_pools(graph),
                "avg_pool2d -> depthwise conv2d (1/k^2)": avg_pools_as_depthwise(graph),
                "batch_norm (no conv of its own) -> x * scale + shift": batch_norms_as_affine(graph),
            }
            prepared = prepare_pt2e(graph, quantizer)
            for observer in output_observers(prepared):
                observer.mark_output()  # argmax lives in the largest logits: a range for them
            with torch.no_grad():
                for i in range(0, len(nhwc), step):
                    prepared(nhwc[i : i + step])
                    if i == 0:
                        freeze_weight_observers(prepared)
            ranges = observed_ranges(prepared)
            converted = convert_pt2e(prepared, fold_quantize=False)
            for node in converted.graph.nodes:
                # Provenance only: litert-torch's re-export deep-copies each node's chain (from our
                # export, prepare and convert) at every node, ~3 s here; the file is the same bytes.
                node.meta.pop("from_node", None)
            lowering = QuantConfig(pt2e_quantizer=quantizer)
            with quiet_native():  # the converter's warnings and C++ log lines
                litert_torch.convert(converted, sample, quant_config=lowering).export(str(dst))
    except Exception as exc:  # converter errors are plain exceptions; one line naming the step
        raise ExportError(
            f"TFLite int8 conversion failed: {type(exc).__name__}: {str(exc)[:300]}",
            "try --per-tensor or --formats onnx; report the failing op",
        ) from exc
    return {"activation_ranges": ranges, "rewrites": {k: n for k, n in rewrites.items() if n}}


def io_quantisation(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input/output name, shape, dtype, scale and zero-point of the int8 file, for the manifest."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native():
        interp = Interpreter(model_path=str(path))

    def describe(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        return {
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero),
        }

    return describe(interp.get_input_details()[0]), describe(interp.get_output_details()[0])
