"""Does ONNX Runtime compute a QDQ int8 file exactly on this CPU? Two checks, both host-independent.

* :func:`pair_report` reads the file's integer weights: every layer whose kernel reduces over input
  pairs must keep any two same-sign codes within :data:`calibration.grid.PAIR_LIMIT`, or x86
  CPUs without VNNI saturate (``calibration.grid``): the arithmetic alone says whether the file
  is exact on those CPUs (every other int8 path accumulates in 32 bits).
* :func:`layer_check` runs the file on this host, node by node: each quantised node (the ops
  between DequantizeLinear and QuantizeLinear, which ONNX Runtime fuses into one integer kernel)
  is cut out with its integer inputs, run with the fused kernels and with graph optimisation off
  (DequantizeLinear -> the float op -> QuantizeLinear, the ONNX definition of the graph), and the
  two integer outputs are compared in output steps (LSB). The float path rounds its sums
  differently, so a value on a rounding boundary may land one step away: an exact kernel gives
  at most 1 LSB; a saturating one many. Node by node, because end to end such one-step ties
  propagate through the later layers (the fused and float graphs differ by more than either
  differs between CPUs).

Run as a script, it prints the layer check as JSON, which is how the test suite runs it on an
emulated CPU (``qemu-x86_64 -cpu Haswell``: AVX2 without VNNI)::

    python -m calibration.onnx_check model_int8.onnx [--input batch.npy]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.grid import PAIR_LIMIT, max_pair_sums, reads_pairs
from edgekit.console import ort_log_level

EXACT_LSB = 1  # the float reference may round a boundary value one step the other way
# A float output (logits from QGemm) is the int32 sum rescaled once: float32 rounding, measured
# 3e-7 of the output's magnitude; a saturated sum is off by percents.
FLOAT_REL = 1e-4
WEIGHT_OPS = {"Conv": 0, "Gemm": None, "MatMul": 1}  # op -> output-channel axis of input 1


@dataclass
class PairReport:
    """What the file's weights allow: the worst same-sign pair of the layers that read pairs, and
    the layers over the limit (where int16 pair sums may saturate)."""

    pair_limit: int
    layers: int
    layers_reading_pairs: int
    max_pair_sum: int
    over_limit: list[str] = field(default_factory=list)

    @property
    def pairs_fit_int16(self) -> bool:
        return not self.over_limit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _initializers(graph: Any) -> dict[str, Any]:
    return {init.name: init for init in graph.initializer}


def weight_codes(path: str | os.PathLike[str]) -> list[tuple[str, np.ndarray, bool]]:
    """(weight name, integer codes as rows [out channels, inputs], reads pairs) per conv/gemm/matmul."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(path)).graph
    inits = _initializers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        codes = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        if len(dq.input) > 2 and dq.input[2] in inits:
            zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int64)
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            codes = codes - (
                zero.reshape([-1 if d == axis else 1 for d in range(codes.ndim)]) if zero.ndim else zero
            )
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv":
            rows, groups = codes.reshape(codes.shape[0], -1), attrs["group"].i if "group" in attrs else 1
            pairs = reads_pairs(codes.shape, groups)
        else:
            trans_b = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
            rows = codes if trans_b else codes.T
            pairs = reads_pairs(rows.shape)
        found.append((dq.input[0], rows, pairs))
    return found


def pair_report(path: str | os.PathLike[str], limit: int = PAIR_LIMIT) -> PairReport:
    """The pair arithmetic of a QDQ file's weights (module doc)."""
    layers = weight_codes(path)
    pairs = [(name, int(max_pair_sums(rows).max())) for name, rows, reads in layers if reads and rows.size]
    worst = max((s for _, s in pairs), default=0)
    return PairReport(limit, len(layers), len(pairs), worst, [name for name, s in pairs if s > limit])


def output_step(path: str | os.PathLike[str]) -> float:
    """The output's step (LSB): its DequantizeLinear's scale, or for float logits computed from
    dequantised inputs (QGemm), the most one step of the last quantised input moves a logit:
    ``input scale x max |W|``. Tolerances between CPUs are counted in these steps."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(path)).graph
    inits = {name: numpy_helper.to_array(init) for name, init in _initializers(graph).items()}
    producer = {out: node for node in graph.node for out in node.output}
    last = producer[graph.output[0].name]
    if last.op_type == "DequantizeLinear":
        return float(np.max(inits[last.input[1]]))
    x_dq, w_dq = (producer.get(name) for name in last.input[:2])
    if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
        raise ValueError(f"{path}: the output is not computed from dequantised tensors")
    weights = inits[w_dq.input[0]].astype(np.float64)
    scale = inits[w_dq.input[1]].astype(np.float64)
    axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
    if scale.ndim:
        weights = weights * scale.reshape([-1 if d == axis else 1 for d in range(weights.ndim)])
    else:
        weights = weights * scale
    return float(np.max(inits[x_dq.input[1]]) * np.abs(weights).max())


# --- the layer check ------------------------------------------------------------------------------


@dataclass
class LayerCheck:
    """Fused kernels vs the float definition, node by node, on this host."""

    nodes: int
    max_lsb: int
    worst_node: str | None
    nodes_off_by_more: list[str]
    float_outputs_max_rel: float
    images: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantised_nodes(graph: Any) -> list[tuple[list[str], str, list[Any]]]:
    """(inputs, output, nodes) for each QuantizeLinear fed by an op, and for each float graph
    output fed by dequantised tensors (the classifier with float logits). The inputs are the
    integer tensors the node's DequantizeLinears read (or the float graph input)."""
    inits = _initializers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    order = {id(node): k for k, node in enumerate(graph.node)}
    graph_inputs = {i.name for i in graph.input}
    ends = [(q.input[0], q.output[0], [q]) for q in graph.node if q.op_type == "QuantizeLinear"]
    ends = [(src, out, q) for src, out, q in ends if src not in graph_inputs and src not in inits]
    ends += [(o.name, o.name, []) for o in graph.output if producer[o.name].op_type != "DequantizeLinear"]
    found = []
    for src, out, tail in ends:
        inputs, body, stack = set(), {}, [src]
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None:
                inputs.add(name)  # the float graph input
            elif id(node) not in body:
                body[id(node)] = node
                if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
                    inputs.add(node.input[0])  # an integer activation: where the node starts
                else:
                    stack += [i for i in node.input if i and i not in inits]
        nodes = sorted(body.values(), key=lambda n: order[id(n)]) + tail
        found.append((sorted(inputs), out, nodes))
    return found


def _value_types(graph: Any) -> dict[str, int]:
    """Element type of every tensor the check feeds or reads (integer tensors from their Q node)."""
    inits = _initializers(graph)
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            types[node.output[0]] = inits[node.input[2]].data_type
    for o in graph.output:
        types[o.name] = o.type.tensor_type.elem_type
    return types


def _sub_model(model: Any, inputs: list[str], output: str, body: list[Any], types: dict[str, int]) -> bytes:
    import onnx
    from onnx import helper

    graph = model.graph
    inits = _initializers(graph)
    used = {i for n in body for i in n.input if i in inits}
    sub = helper.make_graph(
        body,
        "node",
        [
            helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)
            for name in inputs
        ],
        [helper.make_tensor_value_info(output, types.get(output, onnx.TensorProto.FLOAT), None)],
        [inits[name] for name in sorted(used)],
    )
    out = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    return out.SerializeToString()


def _session(model: bytes, fused: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = ort_log_level()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _reference_tensors(model: Any, names: set[str], types: dict[str, int], x: np.ndarray) -> dict[str, Any]:
    """Every tensor the nodes read, from the float definition of the whole graph on input ``x``."""
    import copy

    from onnx import helper

    probe = copy.deepcopy(model)
    present = {o.name for o in probe.graph.output}
    for name in sorted(names - present):
        probe.graph.output.append(helper.make_tensor_value_info(name, types.get(name, 1), None))
    session = _session(probe.SerializeToString(), fused=False)
    wanted = [o.name for o in probe.graph.output]
    return dict(zip(wanted, session.run(wanted, {session.get_inputs()[0].name: x}), strict=True))


def layer_check(path: str | os.PathLike[str], batch: np.ndarray) -> LayerCheck:
    """Node by node, fused vs float definition, on each sample of ``batch`` (module doc)."""
    import onnx

    model = onnx.load(os.fspath(path))
    types = _value_types(model.graph)
    nodes = _quantised_nodes(model.graph)
    needed = {name for inputs, out, _ in nodes for name in (*inputs, out)}
    worst, worst_node, over, float_rel = 0, None, [], 0.0
    samples = [_reference_tensors(model, needed, types, batch[i : i + 1]) for i in range(len(batch))]
    for inputs, out, body in nodes:
        sub = _sub_model(model, inputs, out, body, types)
        fused, plain = _session(sub, True), _session(sub, False)
        for tensors in samples:
            feed = {name: tensors[name] for name in inputs}
            a, b = fused.run(None, feed)[0], plain.run(None, feed)[0]
            if a.dtype.kind == "f":
                scale = max(float(np.abs(b).max()), np.finfo(np.float32).tiny)
                float_rel = max(float_rel, float(np.abs(a - b).max()) / scale)
                continue
            lsb = int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) if a.size else 0
            if lsb > worst:
                worst, worst_node = lsb, out
            if lsb > EXACT_LSB and out not in over:
                over.append(out)
    return LayerCheck(
        len(nodes), worst, worst_node, over, float_rel, len(batch), not over and float_rel <= FLOAT_REL
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ONNX Runtime's int8 kernels vs the QDQ definition")
    parser.add_argument("model", type=Path)
    parser.add_argument("--input", type=Path, help=".npy batch in the model's layout (default: N(0,1))")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.input:
        batch = np.load(args.input, allow_pickle=False).astype(np.float32)
    else:
        import onnxruntime as ort

        shape = (
            ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        )
        dims = [d if isinstance(d, int) else 1 for d in shape]
        batch = np.random.default_rng(args.seed).standard_normal(dims, dtype=np.float32)
    print(json.dumps(layer_check(args.model, batch).to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
