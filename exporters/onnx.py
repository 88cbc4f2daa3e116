"""PyTorch -> ONNX: torch.onnx's TorchScript or dynamo exporter, onnxslim, the strict checker.

One self-contained file (weights inside, no external data), input ``input`` (NCHW), output
``logits``, opset 20. The batch dimension is static (1) unless ``dynamic_batch``.

Two routes, tried in order; the first whose simplified, checked file computes what the module
computes on the example input (ONNX Runtime, the fp32 gate of :mod:`edgekit.verify`) is written
and named in ``info["exporter"]``, the route before it failing in ``info["fallback_reason"]``:

- the TorchScript exporter: after onnxslim it writes the same operators as the dynamo exporter
  for the zoo (but a Flatten for a Reshape before the classifier, and ShuffleNetV2's channel split
  as two Slices for one Split: ONNX Runtime quantises both on the int8 codes) in 4-9x less time
  (MobileNetV3-large at 224 px with onnxslim and the checker: 1.3 vs 5.0 s; CondenseNet 3.0 vs
  18 s; 2-core AMD EPYC). torch deprecates it since 2.9. Its shape arithmetic (EfficientNet-Lite's
  "SAME" pads, computed in Python) comes out as Shape/Slice/Concat nodes, which onnxslim 0.1.98
  folds wrongly (logits 0.6 of their scale off): that is what the check is for;
- the dynamo exporter (``torch.export``), which spells such pads as constants.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.console import captured_output
from edgekit.errors import ExportError
from edgekit.formats import WriteRequest
from exporters import conversion_error

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 20  # what the dynamo exporter writes; the TorchScript exporter's highest


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``onnx-fp32`` writer."""
    return export(request.model, request.example, request.path, dynamic_batch=request.dynamic_batch)


def export(module: Any, example_input: Any, out_path: Path, *, dynamic_batch: bool = False) -> dict[str, Any]:
    """Export, simplify, check and save ``module`` to ``out_path``; returns manifest info."""
    import onnx

    from exporters.rewrites import batch_norms_folded

    with captured_output() as log:
        proto, route, errors = _convert(batch_norms_folded(module), example_input, dynamic_batch)
    if proto is None:
        if isinstance(errors[-1], ExportError):  # the checker's or the outputs' verdict
            raise errors[-1]
        raise conversion_error("onnx", errors[-1], log[0]) from errors[-1]
    pools = global_average_pools(proto)
    onnx.save(proto, out_path, save_as_external_data=False)
    info = {
        "exporter": route,
        "rewrites": {"ReduceMean(H, W) -> GlobalAveragePool": pools} if pools else {},
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        **io_details(proto),
        "ops": op_histogram(proto),
    }
    if errors:
        info["fallback_reason"] = str(errors[0]).strip().splitlines()[0][:300]
    return info


def _convert(module: Any, example_input: Any, dynamic_batch: bool) -> tuple[Any, str, list[Exception]]:
    """(proto, route, the errors of the routes before it); proto is None, route "" if all failed."""
    import torch

    with torch.no_grad():
        reference = module(example_input).numpy()
    errors: list[Exception] = []
    for route, convert in _ROUTES:
        try:
            proto = _simplify_and_check(convert(module, example_input, dynamic_batch))
            _check_outputs(proto, example_input.numpy(), reference, route)
            return proto, route, errors
        except Exception as exc:  # a tracer that cannot take the model, or a wrong file: next route
            errors.append(exc)
    return None, "", errors


def _check_outputs(proto: Any, example: Any, reference: Any, route: str) -> None:
    """The file's logits on the example input, in ONNX Runtime, within the fp32 gate of PyTorch's."""
    import onnxruntime as ort

    from edgekit.verify import GATES, compare

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    error = compare(reference, session.run(None, {INPUT_NAME: example})[0])["max_rel_err"]
    if not error <= GATES["fp32"]["max_rel_err"]:  # NaN fails too
        raise ExportError(
            f"onnx ({route} exporter): the file's logits differ from PyTorch's by {error:.1e} of their scale",
            "report the network with the `--debug` output; use --formats tflite meanwhile",
        )


def _to_onnx(module: Any, example_input: Any, dynamic_batch: bool) -> Any:
    import torch

    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(
        module,
        (example_input,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamo=True,
        opset_version=OPSET,
        external_data=False,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )
    return program.model_proto


def _to_onnx_torchscript(module: Any, example_input: Any, dynamic_batch: bool) -> Any:
    import io
    import warnings

    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # said once, in the module docstring
        torch.onnx.export(
            module,
            (example_input,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=False,
            opset_version=OPSET,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
        )
    return onnx.load_from_string(buffer.getvalue())


_ROUTES = (("torchscript", _to_onnx_torchscript), ("dynamo", _to_onnx))


def _simplify_and_check(proto: Any) -> Any:
    """onnxslim folds constants and fuses; the checker and strict shape inference must pass."""
    import onnx
    import onnxslim

    with captured_output():
        slim = onnxslim.slim(proto)
    try:
        onnx.checker.check_model(slim, full_check=True)
        return onnx.shape_inference.infer_shapes(slim, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ExportError(
            f"onnx: the exported graph fails onnx's checker: {first}",
            "report it with the `--debug` output; use --formats tflite meanwhile",
        ) from exc


def global_average_pools(proto: Any) -> int:
    """Rewrite, in place, every keep-dims ReduceMean over H and W of a 4-D tensor (what both
    exporters make of ``x.mean((2, 3), keepdim=True)``, the dynamo one of ``AdaptiveAvgPool2d(1)``) into
    GlobalAveragePool, the same function. ONNX Runtime's int8 kernels have QLinearGlobalAveragePool
    but no int8 ReduceMean: left as it is, every squeeze-excitation pool runs in float32 between a
    DequantizeLinear and a QuantizeLinear. Returns how many were rewritten."""
    from onnx import numpy_helper

    constants = {init.name: init for init in proto.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*proto.graph.value_info, *proto.graph.input]}
    rewritten = 0
    for node in proto.graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "keepdims" in attrs and attrs["keepdims"].i == 0:
            continue
        if len(node.input) > 1 and node.input[1] in constants:  # opset >= 18: axes is an input
            axes = numpy_helper.to_array(constants[node.input[1]]).tolist()
        elif "axes" in attrs:
            axes = list(attrs["axes"].ints)
        else:
            continue
        if sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        rewritten += 1
    drop_unused_initializers(proto.graph)  # the axes constants
    return rewritten


def channel_shuffles_as_gathers(proto: Any) -> int:
    """Rewrite, in place, every channel shuffle (ShuffleNet's Reshape [N,C,H,W] -> [N,g,C/g,H,W],
    Transpose (0,2,1,3,4), Reshape back to [N,C,H,W]) into one Gather of the input channels in the
    shuffled order: the same values, moved as whole H x W planes. ONNX Runtime runs this 5-D
    Transpose element by element (1.5-1.9 ms for a 2x58x28x28 tensor, uint8 or float32, one
    thread); in a QDQ file the Gather runs on the int8 codes. Returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    }
    producer = {out: node for node in proto.graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped: list[Any] = []
    for node in list(proto.graph.node):
        if node.op_type != "Transpose" or [a.ints for a in node.attribute if a.name == "perm"] != [
            [0, 2, 1, 3, 4]
        ]:
            continue
        split, after = producer.get(node.input[0]), readers.get(node.output[0], [])
        if split is None or split.op_type != "Reshape" or len(after) != 1 or after[0].op_type != "Reshape":
            continue
        merge, source = after[0], split.input[0]
        x, five, back = shapes.get(source), shapes.get(split.output[0]), shapes.get(merge.output[0])
        if x is None or five is None or len(x) != 4 or len(five) != 5 or back is None or back[1:] != x[1:]:
            continue
        channels, groups = x[1], five[1]
        if None in (channels, groups) or five[1] * five[2] != channels or len(readers[split.output[0]]) != 1:
            continue
        order = np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)  # out c <- in order[c]
        index = f"{merge.output[0]}_shuffle_order"
        proto.graph.initializer.append(numpy_helper.from_array(order.astype(np.int64), index))
        gather = helper.make_node("Gather", [source, index], [merge.output[0]], name=merge.name, axis=1)
        merge.CopyFrom(gather)
        dropped += [split, node]
    for node in dropped:
        proto.graph.node.remove(node)
    gone = {out for node in dropped for out in node.output}
    for info in [v for v in proto.graph.value_info if v.name in gone]:
        proto.graph.value_info.remove(info)
    drop_unused_initializers(proto.graph)  # the reshapes' target shapes
    return len(dropped) // 2


def avg_pools_as_depthwise(proto: Any) -> int:
    """Rewrite, in place, every 2-D ``AveragePool`` (no ceil mode or auto pad; padding counted in
    the mean, or none) into a depthwise ``Conv`` with the constant weight 1/(kh*kw): the same sums,
    exact up to summation order. ONNX Runtime's int8 ``QLinearAveragePool`` is 4-5x slower than
    its int8 depthwise convolution of the same shape (ShuffleNetV1's shortcuts, 1 thread), and the
    weight is exact on the int8 grid (every code 127). Returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    channels = {
        v.name: v.type.tensor_type.shape.dim[1].dim_value
        for v in [*proto.graph.value_info, *proto.graph.input]
        if len(v.type.tensor_type.shape.dim) == 4
    }
    rewritten = 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel, pads = attrs.get("kernel_shape", []), list(attrs.get("pads", [0, 0, 0, 0]))
        if (
            node.op_type != "AveragePool"
            or len(kernel) != 2
            or attrs.get("ceil_mode", 0)
            or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"
            or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or (any(pads) and not attrs.get("count_include_pad", 0))
            or not channels.get(node.input[0])
        ):
            continue
        c = channels[node.input[0]]
        weight = f"{node.output[0]}_mean_weight"
        w = np.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(w, weight))
        conv = helper.make_node(
            "Conv",
            [node.input[0], weight],
            list(node.output),
            name=node.name,
            group=c,
            kernel_shape=kernel,
            pads=pads,
            strides=attrs.get("strides", [1, 1]),
        )
        node.CopyFrom(conv)
        rewritten += 1
    return rewritten


def drop_unused_initializers(graph: Any) -> None:
    """Remove, in place, the initializers no node reads any more (after a rewrite)."""
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def op_histogram(proto: Any) -> dict[str, int]:
    """op_type -> count over the main graph, most frequent first."""
    return dict(Counter(node.op_type for node in proto.graph.node).most_common())


def io_details(proto: Any) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes (symbolic dims as names) and dtypes of the graph's inputs and outputs."""
    import onnx

    graph = proto.graph

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value.name, "shape": shape, "dtype": dtype}

    initializers = {init.name for init in graph.initializer}
    return {
        "inputs": [describe(v) for v in graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in graph.output],
    }
