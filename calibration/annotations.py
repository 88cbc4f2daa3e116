"""Quantiser annotations that keep TFLite int8 files on XNNPACK's integer fast path (PT2E).

litert-torch's PT2E quantizer, as shipped, leaves three things float or badly ranged; the
:func:`fast_path_quantizer` it returns fixes them in its ``annotate`` step:

- ReLU6 shares its producer's pre-activation range (:func:`annotate_fused_relu6` fuses them);
- residual adds/muls get no int8 spec under torch 2.13's export (:func:`annotate_binary_ops`);
- channel gathers (CondenseNet) break the layout pass (:func:`annotate_gathers`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# litert-torch's add/mul annotators find ops by ``source_fn_stack``, which torch.export (2.13,
# non-strict) no longer records: residual ``x + block(x)`` then gets no int8 spec, the add stays
# float (DEQUANTIZE -> ADD -> QUANTIZE in the .tflite) and a chain of residual adds stays float.
BINARY_OPS = ("add.Tensor", "mul.Tensor", "sub.Tensor")


def fast_path_quantizer(config: Any) -> Any:
    """litert-torch's PT2EQuantizer with ``config`` global, whose ``annotate`` first fuses ReLU6
    into its producer (:func:`annotate_fused_relu6`) and afterwards gives every still-unannotated
    float add/mul/sub int8 inputs and output (the same activation spec) and every channel gather
    its input's range (:func:`annotate_gathers`)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class FastPathQuantizer(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            annotate_fused_relu6(model, self.global_config)
            model = super().annotate(model)
            annotate_binary_ops(model, self.global_config)
            annotate_gathers(model)
            return model

    return FastPathQuantizer().set_global(config)


# litert-torch fuses conv -> relu only. ReLU6 (aten.hardtanh(x, 0, 6)) is a "shared qparams" op
# there: the conv output is observed *before* the clamp and the ReLU6 output reuses that range,
# so every ReLU6 activation of a MobileNet spends ~40% of its 256 levels on negative values it
# never takes (MobileNetV2 per-channel: logits SQNR 14.2 dB -> 16.7 dB, top-1 agreement with
# float 91.1% -> 94.0% on 1000 ImageNet views once fused; docs/int8.md).
_PRODUCERS = {
    torch.ops.aten.conv1d.default: "weighted",
    torch.ops.aten.conv2d.default: "weighted",
    torch.ops.aten.convolution.default: "weighted",
    torch.ops.aten.linear.default: "weighted",
    torch.ops.aten.add.Tensor: "binary",
}
_RELU6 = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)


def annotate_fused_relu6(model: torch.fx.GraphModule, config: Any) -> int:
    """Annotate conv/linear/add -> ReLU6 as one int8 op: inputs quantised at the producer, one
    output range observed after the clamp (what TFLite runs: CONV_2D/ADD with a fused RELU6).
    Returns how many pairs were fused."""
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    fused = 0
    for clamp in model.graph.nodes:
        if clamp.target not in _RELU6 or tuple(clamp.args[1:3]) != (0.0, 6.0):
            continue
        producer = clamp.args[0]
        kind = _PRODUCERS.get(getattr(producer, "target", None))
        if kind is None or len(producer.users) != 1 or "quantization_annotation" in producer.meta:
            continue  # a producer read elsewhere too needs its own (unclamped) range
        act = get_input_act_qspec(config)
        if kind == "weighted":
            inputs = {producer.args[0]: act, producer.args[1]: get_weight_qspec(config)}
            if len(producer.args) > 2 and isinstance(producer.args[2], torch.fx.Node):
                inputs[producer.args[2]] = get_bias_qspec(config)
        else:
            inputs = {a: act for a in producer.args[:2] if isinstance(a, torch.fx.Node)}
        producer.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, _annotated=True
        )
        clamp.meta["quantization_annotation"] = QuantizationAnnotation(
            output_qspec=get_output_act_qspec(config), _annotated=True
        )
        fused += 1
    return fused


def annotate_binary_ops(model: torch.fx.GraphModule, config: Any) -> int:
    """Annotate unannotated float add/mul/sub nodes with ``config``'s activation specs; returns how many."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    targets = {getattr(torch.ops.aten, name.split(".")[0]).Tensor for name in BINARY_OPS}
    done = 0
    for node in model.graph.nodes:
        if node.target not in targets or "quantization_annotation" in node.meta or not _is_float(node):
            continue
        inputs = {
            arg: config.input_activation
            for arg in node.args[:2]
            if isinstance(arg, torch.fx.Node) and _is_float(arg)
        }
        if any(arg.meta["val"].dim() != node.meta["val"].dim() for arg in inputs):
            continue  # a broadcast constant of lower rank (e.g. an unfolded BN's [C, 1, 1]): its
            # quantised copy would not be NHWC-compatible in litert-torch's layout pass
        if any(_per_channel_constant(model, arg) for arg in inputs):
            continue  # e.g. a BN moved before a folded gather (exporters.rewrites): a per-tensor
            # int8 copy of its per-channel constants would lose the small ones; float, as the BN
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, output_qspec=config.output_activation, _annotated=True
        )
        done += 1
    return done


def annotate_gathers(model: torch.fx.GraphModule) -> int:
    """index_select of a quantised tensor shares its input's int8 range (a gather moves values, it
    does not change them). Unannotated, its DEQUANTIZE input stops litert-torch's NHWC layout pass
    ("non-NHWC compatible node": CondenseNet's channel selections failed to convert)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    done = 0
    for node in model.graph.nodes:
        if node.target != torch.ops.aten.index_select.default or "quantization_annotation" in node.meta:
            continue
        source = node.args[0]
        annotation = source.meta.get("quantization_annotation") if isinstance(source, torch.fx.Node) else None
        if annotation is None or annotation.output_qspec is None:
            continue
        shared = SharedQuantizationSpec(source)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={source: shared}, output_qspec=shared, _annotated=True
        )
        done += 1
    return done


def _per_channel_constant(model: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """A constant of the graph (``get_attr``) with more than one value."""
    if node.op != "get_attr":
        return False
    return functools.reduce(getattr, str(node.target).split("."), model).numel() > 1


def _is_float(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()
