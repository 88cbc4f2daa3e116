"""Activation rewrites that keep int8 models on the runtimes' integer fast paths.

Hard-swish and hard-sigmoid have no int8 kernel in the runtimes we ship: LiteRT leaves an int8
HARD_SWISH outside the XNNPACK delegate (each one splits the graph into another partition), and
ONNX Runtime runs HardSwish/HardSigmoid in float32 between a DequantizeLinear and a QuantizeLinear.
Written with ops both runtimes run in int8 they stay on the fast path::

    hardswish(x)   = x * relu6(x + 3) * (1/6)
    hardsigmoid(x) = relu6(x + 3) * (1/6)

which is exact in float32 up to rounding (Add + ReLU6 fuse into one int8 ADD / QLinearAdd, the
two multiplies are int8 MUL / QLinearMul). Sigmoid, ReLU and ReLU6 already have int8 kernels and
are left as they are. The rewrite is applied to a copy of the float model right before the int8
quantisers (``calibration.int8``); the float artifacts keep the original modules.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import nn

SIXTH = 1.0 / 6.0


class _Decomposed(nn.Module):
    """Holds the constants 3 and 1/6 as (1, 1, 1, 1) buffers for feature maps: litert-torch keeps an
    int8 op in NHWC only when every input is 4-D, and a quantised scalar constant is 0-D (each
    add/mul would then run NCHW between two TRANSPOSEs)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu6 = nn.ReLU6()
        self.register_buffer("three", torch.full((1, 1, 1, 1), 3.0), persistent=False)
        self.register_buffer("sixth", torch.full((1, 1, 1, 1), SIXTH), persistent=False)

    def constants(self, x: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        return (self.three, self.sixth) if x.dim() == 4 else (3.0, SIXTH)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        three, sixth = self.constants(x)
        return self.relu6(x + three) * sixth


class HardSigmoidDecomposed(_Decomposed):
    """``relu6(x + 3) * (1/6)`` as add, ReLU6 and a multiply by a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)


class HardSwishDecomposed(_Decomposed):
    """``x * relu6(x + 3) * (1/6)``: add + ReLU6, x times that, then the constant multiply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three, sixth = self.constants(x)
        return x * self.relu6(x + three) * sixth


REWRITES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Hardswish: HardSwishDecomposed,
    nn.Hardsigmoid: HardSigmoidDecomposed,
}


def int8_friendly(model: nn.Module) -> dict[str, Any]:
    """Replace, in place, every activation module of ``REWRITES`` by its int8-friendly form.

    Returns ``{"rewritten": {"Hardswish": n, ...}, "formulation": {...}}`` (empty counts when the
    model has none, e.g. ReLU6 networks).
    """
    counts: Counter[str] = Counter()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = REWRITES.get(type(child))
            if replacement is not None:
                setattr(parent, name, replacement())
                counts[type(child).__name__] += 1
    return {
        "rewritten": dict(sorted(counts.items())),
        "formulation": {
            "Hardswish": "x * relu6(x + 3) * (1/6)",
            "Hardsigmoid": "relu6(x + 3) * (1/6)",
        },
    }


def int8_friendly_copy(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`int8_friendly` on a deep copy (the caller's float model keeps its modules)."""
    if not any(type(m) in REWRITES for m in model.modules()):
        return model, int8_friendly(model)  # nothing to rewrite: no copy, an empty report
    model = copy.deepcopy(model).eval()
    return model, int8_friendly(model)


# --- PT2E (litert-torch int8): the element-wise ops its annotators miss -----------------------------

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


def _is_float(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


__all__ = [
    "HardSigmoidDecomposed",
    "HardSwishDecomposed",
    "annotate_binary_ops",
    "annotate_fused_relu6",
    "annotate_gathers",
    "fast_path_quantizer",
    "int8_friendly",
    "int8_friendly_copy",
]
