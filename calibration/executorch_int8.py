"""ExecuTorch int8 ``.pte``: PT2E with XNNPACK's quantiser, fed edgekit's calibration tensors.

The same calibration set and range estimators as the other int8 formats: the activation
observers are :func:`calibration.ranges.range_observer` (the output observer keeps the largest
logits); weights are symmetric per output channel (-127..127), what XNNPACK's QC8 kernels take.
XNNPACK widens int8 to int16/int32 before multiplying on x86 and ARM alike, so no pair limit.
The input and output stay float32: the graph quantises on entry and dequantises on exit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from calibration.annotations import annotate_fused_relu6
from calibration.grid import INT8_GRID, WeightGrid
from calibration.pt2e import freeze_weight_observers, observed_ranges, output_observers
from calibration.ranges import range_observer
from calibration.threads import one_thread
from edgekit.console import captured_output
from edgekit.formats import WriteRequest

QUANTIZER = "ExecuTorch XNNPACKQuantizer (PT2E) with edgekit range observers"


def weight_grid(per_channel: bool) -> WeightGrid:
    """The ``executorch-int8`` format's grid: 8-bit symmetric, per channel by default."""
    return dataclasses.replace(INT8_GRID, per_channel=per_channel)


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``executorch-int8`` writer: calibrate PT2E observers on the request's tensors, lower."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from exporters import conversion_error
    from exporters.executorch import lower

    q = request.int8
    tensors = torch.from_numpy(np.ascontiguousarray(q.tensors))
    error = None
    with captured_output() as log:
        try:
            with one_thread():  # the forward passes are a small part of this step
                graph = torch.export.export(request.model.eval(), (tensors[:1],)).module()
                config = quantizer(q.grid.per_channel, q.symmetric_activations, q.method)
                prepared = prepare_pt2e(graph, config)
                for observer in output_observers(prepared):
                    observer.mark_output()
                with torch.no_grad():
                    for i in range(len(tensors)):  # the exported graph has the static batch of 1
                        prepared(tensors[i : i + 1])
                        if i == 0:
                            freeze_weight_observers(prepared)
                ranges = observed_ranges(prepared)
                converted = convert_pt2e(prepared, fold_quantize=True)
                info = lower(torch.export.export(converted, (tensors[:1],)), request.path)
        except Exception as exc:  # quantiser/partitioner failures become one ExportError
            error = exc
    if error is not None:
        raise conversion_error("executorch-int8", error, log[0]) from error
    return {**info, "quantizer": QUANTIZER, "weight_grid": q.grid.describe(), "activation_ranges": ranges}


def quantizer(per_channel: bool, symmetric_activations: bool, method: str) -> Any:
    """XNNPACK's symmetric int8 config with edgekit's range observer on the activations."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    act = dataclasses.replace(
        config.input_activation,
        qscheme=torch.per_tensor_symmetric if symmetric_activations else torch.per_tensor_affine,
        observer_or_fake_quant_ctr=range_observer(method).with_args(eps=1e-12),
    )
    config = dataclasses.replace(config, input_activation=act, output_activation=act)

    class FusedRelu6Quantizer(XNNPACKQuantizer):
        # XNNPACK's annotators fuse conv -> ReLU only: ReLU6 would reuse the conv's unclamped
        # range, spending ~40% of the levels on values it never takes (calibration.annotations)
        def annotate(self, model: Any) -> Any:
            annotate_fused_relu6(model, config)
            return super().annotate(model)

    return FusedRelu6Quantizer().set_global(config)
