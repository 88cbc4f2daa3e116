"""Module rewrites before conversion: BatchNorm folding for every converter, and the activation
rewrites that keep int8 models on the runtimes' integer fast paths.

Each converter folds an inference BatchNorm into the convolution before it anyway; folding it in
PyTorch first (:func:`batch_norms_folded`) hands the converters' traces a third fewer nodes. The
int8 step folds with the same code (:func:`fold_batchnorm`, in place), so that the weights it
rounds and records are the ones the converters write.

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
import functools
import itertools
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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each inference BatchNorm2d into the Conv2d feeding only it, in place: the conv's weight
    and bias absorb the affine map, the BN becomes nn.Identity, every module keeps its name (the
    int8 step's per-weight records are keyed by them). Exact up to float32 rounding."""
    return _fold_pairs(model, _foldable(model))


def batch_norms_folded(model: nn.Module) -> nn.Module:
    """:func:`fold_batchnorm` on a copy of ``model`` for the float converters; ``model`` itself when
    it has no BatchNorm to fold (or is in training mode). The converters' traces are the export's
    cost: MobileNetV3-large at 224 px, 2-core AMD EPYC, litert-torch 25 -> 16 s and torch.onnx
    7 -> 5 s, the same graph out (docs/export.md)."""
    pairs = [] if model.training else _foldable(model)
    # The copy keeps the names, so the pairs found on the caller's module (the reference) hold.
    return _fold_pairs(copy.deepcopy(model), pairs) if pairs else model


def _fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    for conv_name, bn_name in pairs:
        _fold_into(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
    return model


def _foldable(model: nn.Module) -> list[tuple[str, str]]:
    """The (conv, bn) pairs whose BN normalises with its running statistics: a constant affine map
    (a BN in training mode, or without statistics, normalises with the batch's)."""
    pairs = _conv_bn_pairs(model) if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else []
    return [
        (conv, bn)
        for conv, bn in pairs
        if not model.get_submodule(bn).training and model.get_submodule(bn).running_var is not None
    ]


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN reads only that conv's output, each called once (a
    shared module folded for one call would change the others); found by torch.fx, or between
    neighbours in an nn.Sequential when fx cannot trace the model (data-dependent control flow)."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # torch.fx's errors for untraceable Python vary; the fallback still folds
        return _sequential_conv_bn_pairs(model)
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        users = list(node.users)
        if node.op != "call_module" or len(users) != 1 or users[0].op != "call_module":
            continue
        conv, bn = model.get_submodule(node.target), model.get_submodule(users[0].target)
        once = calls[node.target] == calls[users[0].target] == 1
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and once:
            pairs.append((node.target, users[0].target))
    return pairs


def _sequential_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            prefix = f"{name}." if name else ""
            for (a_name, a), (b_name, b) in itertools.pairwise(module.named_children()):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((prefix + a_name, prefix + b_name))
    return pairs


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    ones, zeros = torch.ones_like(bn.running_var), torch.zeros_like(bn.running_mean)
    gamma, beta = (bn.weight, bn.bias) if bn.affine else (ones, zeros)  # affine=False: no weight, bias
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else zeros
    conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * factor + beta)


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


# --- Exported graphs (litert-torch int8; the gather fold for the fp32 file too) -----------------------

NON_NEGATIVE = ("relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_")


def zero_padded_max_pools(graph: Any) -> int:
    """Rewrite, in place, every padded ``max_pool2d`` of an exported graph module whose input comes
    straight from a ReLU/ReLU6 into an explicit zero ``constant_pad_nd`` and an unpadded pool.

    PyTorch pads a max pool with -inf, which litert-torch writes as PADV2 with the lowest value:
    XNNPACK does not take PADV2, so the stem pool of ShuffleNets and ResNeXts splits the int8 graph
    in two partitions. After a ReLU every value is >= 0 and every 3x3/pad-1 window holds at least
    one of them, so padding with 0 gives the same maxima exactly (a plain PAD, which XNNPACK runs).
    Returns how many pools were rewritten.
    """
    import torch

    aten = torch.ops.aten
    rewritten = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target is not aten.max_pool2d.default:
            continue
        x, kernel, stride, padding, *rest = [*node.args, [0, 0]][:4] + list(node.args[4:])
        padding = [padding[0], padding[-1]]
        ceil_mode = len(rest) > 1 and rest[1]  # an extra window may then start in the padding
        if not any(padding) or ceil_mode or not _non_negative(x):
            continue
        with graph.graph.inserting_before(node):
            pads = [padding[1], padding[1], padding[0], padding[0]]  # W left/right, H top/bottom
            padded = graph.graph.call_function(aten.constant_pad_nd.default, (x, pads, 0.0))
        node.args = (padded, kernel, stride, [0, 0], *rest)
        rewritten += 1
    graph.recompile()
    return rewritten


def relus_through_concats(graph: Any) -> int:
    """Rewrite, in place, ``relu(cat([a, b]))`` into ``cat([relu(a), relu(b)])`` (elementwise, so
    exact), dropping the ReLU of a branch already >= 0 (ShuffleNetV1's pooled shortcut).

    An int8 RELU after a concatenation has its own output scale, which XNNPACK's clamp does not
    take: it stays off the delegate and splits the graph. Moved onto the branches it fuses into
    the convolution before it (CONV_2D with a fused ReLU) or disappears. Returns how many ReLUs moved.
    """
    import torch

    aten = torch.ops.aten
    moved = 0
    for node in list(graph.graph.nodes):
        if not _is_relu(node) or node.args[0].target is not aten.cat.default or len(node.args[0].users) != 1:
            continue
        cat = node.args[0]
        branches = []
        with graph.graph.inserting_before(cat):
            for branch in cat.args[0]:
                if not _non_negative(branch):
                    branch = graph.graph.call_function(aten.relu.default, (branch,))
                branches.append(branch)
        cat.args = (branches, *cat.args[1:])
        node.replace_all_uses_with(cat)
        graph.graph.erase_node(node)
        moved += 1
    graph.recompile()
    return moved


def avg_pools_as_depthwise(graph: Any) -> int:
    """Rewrite, in place, every ``avg_pool2d`` (no ceil mode; padding counted in the mean, or none)
    into a depthwise convolution with the constant weight 1/(kh*kw), the same sums (exact up to
    summation order).

    XNNPACK's delegate runs AVERAGE_POOL_2D in float only: an int8 one falls to the reference
    kernel and splits the graph (ShuffleNetV1's shortcuts, CondenseNet's transitions). The
    depthwise form is delegated, and its weights are exact on the int8 grid (all equal: code 127).
    Returns how many pools were rewritten."""
    import torch

    aten = torch.ops.aten
    rewritten = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target is not aten.avg_pool2d.default:
            continue
        x, kernel, stride, padding, ceil_mode, include_pad, divisor = [
            *node.args,
            *[None, None, [0, 0], False, True, None][len(node.args) - 1 :],
        ][:7]
        kernel = [kernel[0], kernel[-1]]
        stride, padding = list(stride or kernel), [padding[0], padding[-1]]
        if ceil_mode or divisor is not None or (any(padding) and not include_pad):
            continue
        channels = x.meta["val"].shape[1]
        name = f"_avg_pool_weight_{rewritten}"
        weight = torch.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        # A parameter, like any conv weight: PT2E folds a following BatchNorm into it by reassigning
        # the attribute as a parameter, which a buffer of the same name refuses.
        graph.register_parameter(name, nn.Parameter(weight, requires_grad=False))
        with graph.graph.inserting_before(node):
            weight = graph.graph.get_attr(name)
            conv = graph.graph.call_function(
                aten.conv2d.default, (x, weight, None, stride, padding, [1, 1], channels)
            )
        conv.meta = dict(node.meta)
        node.replace_all_uses_with(conv)
        graph.graph.erase_node(node)
        rewritten += 1
    graph.recompile()
    return rewritten


# A folded gather may add at most this many multiply-adds per gathered value. CondenseNet at
# 224 px (this Xeon with AMX, LiteRT + XNNPACK, 1 thread, interleaved with the gathered files):
# limit 48 (growth <= 16, +113M MACs) fp32 0.91x, int8 0.85x; 96 (+267M) fp32 0.91x, int8 0.83x;
# every layer (+750M) fp32 1.06x, int8 0.82x. 48: the fp32 gain for the fewest added MACs (a CPU
# with slower int8 than AMX pays more for them).
GATHER_FOLD_MACS = 48
GATHER_FOLD = "conv(relu(bn(x[:, index]))) -> dense conv(relu(bn(x)))"


GATHERS = (torch.ops.aten.index_select.default, torch.ops.aten.index.Tensor)


def calls_a_gather(module: nn.Module, sample: torch.Tensor) -> bool:
    """Whether one eager forward of ``module`` gathers (``index_select``, ``x[:, index]``): a
    few milliseconds, where the export :func:`gathers_into_convs` reads costs seconds, and most
    networks have no gather."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        found = False

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            Seen.found |= func in GATHERS  # x[:, index] runs aten.index, which export may lower
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Seen():
        module(sample)
    return Seen.found


def gathers_into_convs(graph: Any, max_macs_per_value: float = GATHER_FOLD_MACS) -> int:
    """Fold, in place, a constant channel gather ``x[:, index]`` (``index_select``) into the
    convolution it feeds, through an inference BatchNorm and a ReLU between them (CondenseNet's
    condensed 1x1 layers), where that costs at most ``max_macs_per_value`` multiply-adds per
    gathered value. Returns how many gathers were folded.

    XNNPACK has no gather: each is a GATHER_ND on a plain LiteRT kernel between two delegate
    partitions, with a TRANSPOSE to NCHW and back around it. BN and ReLU act per channel, so when
    every repeated index carries the same BN constants (CondenseNet's conversion copies them from
    the source channel; edgekit's BN re-estimation measures them on identical values) they
    commute with the gather, and the gather goes into the weights::

        conv(relu(bn(x[:, index])))  ==  conv'(relu(bn'(x)))

    bn' is ``x * scale + shift`` with each kept channel's constants (0 for the others, whose
    output is then 0) and conv' a dense conv over all input channels: zero columns for channels
    no group keeps, each group's columns at their source channels, summed where an index
    repeats. Exact up to float rounding. Its price is the condensation itself: groups that keep
    overlapping channels only fold into the dense layer (groups x the multiply-adds); a 0/1
    selection conv in front of the grouped one costs C_in per gathered value, and tiling the
    input once per group (so each group keeps its own BN) costs the dense form plus the copies
    (measured on CondenseNet at 224 px: 2.4x and 1.8x the fp32 time), so the dense form is the
    cheapest exact one.
    """
    aten = torch.ops.aten
    folded = 0
    for node in list(graph.graph.nodes):
        chain = _gather_chain(node)
        if chain is None:
            continue
        gather, norm, relu, conv = chain
        x, index = gather.args[0], _constant(graph, gather.args[2])
        weight = _constant(graph, conv.args[1])
        groups = conv.args[6] if len(conv.args) > 6 else 1
        out, per_group, kh, kw = weight.shape
        channels = x.meta["val"].shape[1]
        if out * kh * kw * (channels - per_group) > max_macs_per_value * len(index):
            continue
        affine = _scattered_affine(graph, norm, index, channels) if norm is not None else None
        if norm is not None and affine is None:
            continue  # a repeated index with other BN constants: only a per-group copy is exact
        dense = torch.zeros(out, channels, kh, kw)
        rows = out // groups
        for g in range(groups):
            kept = index[g * per_group : (g + 1) * per_group]
            dense[g * rows : (g + 1) * rows].index_add_(1, kept, weight[g * rows : (g + 1) * rows].detach())
        name = f"_gather_fold_{folded}"
        graph.register_parameter(f"{name}_weight", nn.Parameter(dense, requires_grad=False))  # as any conv's
        with graph.graph.inserting_before(conv):
            y = x
            if affine is not None:  # (see batch_norms_as_affine: why not a BatchNorm)
                y = _affine(graph, y, *affine, name, {**norm.meta, "val": x.meta["val"]})
            if relu is not None:
                y = graph.graph.call_function(aten.relu.default, (y,))
                y.meta = {**relu.meta, "val": x.meta["val"]}
            given = list(conv.args[2:6])  # bias, stride, padding, dilation
            rest = given + [None, [1, 1], [0, 0], [1, 1]][len(given) :]
            new = graph.graph.call_function(
                aten.conv2d.default, (y, graph.graph.get_attr(f"{name}_weight"), *rest, 1)
            )
        new.meta = dict(conv.meta)
        conv.replace_all_uses_with(new)
        for old in (conv, relu, norm, gather):
            if old is not None:
                graph.graph.erase_node(old)
        folded += 1
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return folded


def _gather_chain(node: Any) -> tuple[Any, Any, Any, Any] | None:
    """(gather, BN or None, ReLU or None, conv) when ``node`` is a constant channel gather of a
    feature map that reaches a conv's input through at most an inference BN and a ReLU, in that
    order, each used once."""
    aten = torch.ops.aten
    if node.op != "call_function" or node.target is not aten.index_select.default:
        return None
    x, dim, index = node.args
    if dim != 1 or x.meta["val"].dim() != 4 or index.op != "get_attr":
        return None
    norm = relu = None
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        if user.target is aten.batch_norm.default and norm is None and relu is None and _inference_norm(user):
            norm = current = user
        elif _is_relu(user) and relu is None:
            relu = current = user
        elif user.target is aten.conv2d.default and user.args[0] is current and user.args[1].op == "get_attr":
            return node, norm, relu, user
        else:
            return None
    return None


def _inference_norm(node: Any) -> bool:
    """A BN with constant weight, bias and running statistics, not normalising with batch ones."""
    constants = node.args[1:5]
    return not node.args[5] and all(getattr(c, "op", None) == "get_attr" for c in constants)


def batch_norms_as_affine(graph: Any) -> int:
    """Rewrite, in place, every inference BatchNorm of a feature map that PT2E does not fold into
    a conv (its input is not a conv, or a conv read elsewhere too) into ``x * scale + shift``
    with [1, C, 1, 1] constants: the same arithmetic up to float rounding. Returns how many.

    Such a BN runs in float in the int8 file either way (DEQUANTIZE, SUB, MUL, QUANTIZE;
    ``calibration.annotations`` leaves the product float too). As a BatchNorm it also costs
    PT2E's convert ~50 s, which exports 96 conv-BN patterns to look for training-time folds
    whenever one is left (CondenseNet's pre-activation BNs), and PT2E folds a BN into the conv
    before it even when that conv's output is read elsewhere too, which changes what the other
    reader gets."""
    aten = torch.ops.aten
    rewritten = 0
    for node in list(graph.graph.nodes):
        if node.target is not aten.batch_norm.default or not _inference_norm(node):
            continue
        x = node.args[0]
        if x.meta["val"].dim() != 4 or (x.target is aten.conv2d.default and len(x.users) == 1):
            continue
        scale, shift = (t.reshape(1, -1, 1, 1) for t in _norm_affine(graph, node))
        with graph.graph.inserting_before(node):
            y = _affine(graph, x, scale, shift, f"_batch_norm_{rewritten}", dict(node.meta))
        node.replace_all_uses_with(y)
        graph.graph.erase_node(node)
        rewritten += 1
    graph.recompile()
    return rewritten


def _affine(graph: Any, x: Any, scale: Any, shift: Any, name: str, meta: dict[str, Any]) -> Any:
    """``x * scale + shift`` inserted at the graph's insertion point, the constants as buffers."""
    aten = torch.ops.aten
    y = x
    for kind, tensor, op in zip(
        ("scale", "shift"), (scale, shift), (aten.mul.Tensor, aten.add.Tensor), strict=True
    ):
        graph.register_buffer(f"{name}_{kind}", tensor)
        constant = graph.graph.get_attr(f"{name}_{kind}")
        constant.meta["val"] = tensor  # its rank and size, read by calibration.annotations
        y = graph.graph.call_function(op, (y, constant))
        y.meta = dict(meta)
    return y


def _norm_affine(graph: Any, norm: Any) -> tuple[Any, Any]:
    """An inference BN's per-channel scale and shift."""
    weight, bias, mean, var = (_constant(graph, n).detach() for n in norm.args[1:5])
    scale = weight * torch.rsqrt(var + norm.args[7])
    return scale, bias - mean * scale


def _scattered_affine(graph: Any, norm: Any, index: Any, channels: int) -> tuple[Any, Any] | None:
    """An inference BN after ``x[:, index]`` as ``x * scale + shift`` on ``x`` itself (0 for
    channels not kept, [1, C, 1, 1]); None when a repeated index carries other constants."""
    for node in norm.args[1:5]:
        tensor = _constant(graph, node).detach()
        full = torch.zeros(channels)
        full[index] = tensor  # a repeated index: any one write wins
        if not torch.equal(full[index], tensor):
            return None
    return tuple(
        torch.zeros(channels).index_copy_(0, index, t).reshape(1, channels, 1, 1)
        for t in _norm_affine(graph, norm)
    )


def _constant(graph: Any, node: Any) -> Any:
    """The tensor a ``get_attr`` node names (a dotted path into the exported module)."""
    return functools.reduce(getattr, node.target.split("."), graph)


def _is_relu(node: Any) -> bool:
    name = getattr(node.target, "__name__", "").split(".")[0]
    return node.op == "call_function" and name in ("relu", "relu_")


POOLS_AND_PADS = ("max_pool2d", "avg_pool2d", "constant_pad_nd")


def _non_negative(node: Any) -> bool:
    """The node's values are >= 0: a ReLU, a hardtanh (ReLU6) with a lower bound >= 0, or a pool
    or zero pad of such a node."""
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", "").split(".")[0]
    if name in POOLS_AND_PADS:
        fill = node.args[2] if name == "constant_pad_nd" and len(node.args) > 2 else 0.0
        return fill >= 0 and _non_negative(node.args[0])
    low = node.args[1] if name.startswith("hardtanh") and len(node.args) > 1 else 0.0
    return name in NON_NEGATIVE and low >= 0


__all__ = [
    "GATHER_FOLD",
    "GATHER_FOLD_MACS",
    "HardSigmoidDecomposed",
    "HardSwishDecomposed",
    "avg_pools_as_depthwise",
    "batch_norms_as_affine",
    "gathers_into_convs",
    "int8_friendly",
    "int8_friendly_copy",
    "relus_through_concats",
    "zero_padded_max_pools",
]
