"""PyTorch -> TFLite with litert-torch (no TensorFlow), float32 and float16 weights.

TFLite users feed channel-last images, so the converted graph takes NHWC: the module is wrapped
with litert-torch's ``to_channel_last_io`` (a permute before the network, which the converter
folds into its layout pass). float16 is the float32 file with weights cast to fp16 by
ai-edge-quantizer's ``float_casting`` (weight-only: DEQUANTIZE ops feed float kernels, I/O
stays float32) — the same file TFLiteConverter's ``supported_types=[tf.float16]`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.console import captured_output
from edgekit.formats import WriteRequest
from exporters import conversion_error
from exporters.inspect_tflite import describe


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``tflite-fp32`` writer."""
    return export(request.model, request.example, request.path)


def write_fp16(request: WriteRequest) -> dict[str, Any]:
    """The ``tflite-fp16`` writer: the float32 file (``request.source``) with fp16 weights."""
    return export_fp16(request.source, request.path)


def export(module: Any, example_input: Any, out_path: Path) -> dict[str, Any]:
    """Convert ``module`` (NCHW ``example_input``) to an NHWC float32 .tflite at ``out_path``."""
    sample = example_input.permute(0, 2, 3, 1).contiguous()
    error = None
    with captured_output() as log:
        try:
            import litert_torch  # noisy import (absl, torchao): inside the capture

            litert_torch.config.show_progress = False
            from exporters.rewrites import batch_norms_folded

            wrapped = litert_torch.to_channel_last_io(batch_norms_folded(module), args=[0]).eval()
            wrapped, rewrites = _folded_gathers(wrapped, sample)
            litert_torch.convert(wrapped, (sample,)).export(str(out_path))
        except Exception as exc:  # any converter failure becomes one ExportError naming the op
            error = exc
    if error is not None:
        raise conversion_error("tflite", error, log[0]) from error
    return {"converter": "litert-torch", "rewrites": rewrites, **describe(out_path)}


def _folded_gathers(module: Any, sample: Any) -> tuple[Any, dict[str, int]]:
    """The exported graph with its channel gathers folded into convolutions (XNNPACK has no
    gather; exporters/rewrites.py), or ``module`` itself when there is none to fold."""
    import torch

    from exporters.rewrites import GATHER_FOLD, calls_a_gather, gathers_into_convs

    if not calls_a_gather(module, sample):
        return module, {}
    graph = torch.export.export(module, (sample,)).module()
    folded = gathers_into_convs(graph)
    return (graph, {GATHER_FOLD: folded}) if folded else (module, {})


def export_fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """fp16 weights, float32 I/O: ``fp32_path``'s weights cast to float16."""
    error = None
    with captured_output() as log:
        try:
            _cast_weights_fp16(fp32_path, out_path)
        except Exception as exc:  # ai-edge-quantizer raises plain exceptions on unsupported ops
            error = exc
    if error is not None:
        raise conversion_error("tflite-fp16", error, log[0]) from error
    return {"converter": "litert-torch + ai-edge-quantizer float_casting", **describe(out_path)}


def _cast_weights_fp16(src: Path, dst: Path) -> None:
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    quant = quantizer.Quantizer(str(src))
    quant.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    quant.quantize().export_model(str(dst), overwrite=True)
