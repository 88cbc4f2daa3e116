"""ONNX int8: ONNX Runtime's static QDQ quantiser fed with our own activation ranges.

ORT's calibrators are used for nothing but the hand-over format: the ranges come from
:mod:`calibration.ranges` (ORT's Entropy with default bins returns exactly the MinMax ranges, and
it has no MSE search), written as an ORT calibration cache and read back by ``quantize_static``.
Weights are int8 symmetric (per channel by default), activations uint8 asymmetric (or int8
symmetric), in QDQ form, which ORT fuses into QLinearConv/QLinearMatMul at session creation.
The weight grid is ours too (:data:`ONNX_GRID`, passed as per-channel scale overrides): every
layer whose kernel reads input pairs keeps any two same-sign codes within 128, so the file computes
the same on x86 CPUs without VNNI as on every other (``calibration.grid``; checked by
``calibration.onnx_check``). The graph outputs (logits) stay float: see :func:`float_outputs`.
"""

from __future__ import annotations

import collections
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calibration.grid import PAIR_LIMIT, WeightGrid, reads_pairs
from calibration.onnx_check import layer_check, pair_report
from calibration.ranges import DEFAULT_METHOD, collect_ranges
from edgekit.console import ORT_QUIET, ort_log_level
from edgekit.errors import ExportError
from edgekit.formats import WriteRequest

# The grid of ONNX Runtime int8 files: exact on every CPU path (docs/int8.md weighs the alternatives).
ORT_FATAL_ONLY = 4  # ONNX Runtime severity
ONNX_GRID = WeightGrid(bits=8, per_channel=True, pair_limit=PAIR_LIMIT)
QUANTIZER = "onnxruntime quantize_static (QDQ) with edgekit ranges and weight grid"
ProbeRun = Callable[[np.ndarray], dict[str, np.ndarray]]  # images -> every float tensor by name
# A probe call holds every tensor of the graph at once: at 16 images MobileNetV3-large's come to
# 690 MB at 224 px, and memory a process touches first costs kernel time on a VM (clearing and
# backing each page). `edgekit export mobilenet_v3 --int8` on the 2-core EPYC, 3 pairs in turn:
# 16 a call -> at most 224 MiB a call (5 images), peak 2.11 -> 1.35 GB, system time 25 -> 16 s.
PROBE_MEMORY = 224 << 20


def weight_grid(per_channel: bool) -> WeightGrid:
    """The ``onnx-int8`` format's grid (the format registry names this function)."""
    return dataclasses.replace(ONNX_GRID, per_channel=per_channel)


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``onnx-int8`` writer: the float file (``request.source``), or a fresh export of the
    remedied model when the float graph changed, quantised on the request's grid and ranges."""
    from exporters import onnx as onnx_exporter

    q = request.int8
    with tempfile.TemporaryDirectory(prefix="edgekit-remedied-") as tmp:
        src = request.source
        if q.changed:
            src = Path(tmp) / "remedied.onnx"
            onnx_exporter.export(request.model, request.example, src)
        info = quantize_onnx(
            src,
            request.path,
            q.tensors,
            method=q.method,
            grid=q.grid,
            levels=q.levels if q.changed else None,
            symmetric_activations=q.symmetric_activations,
        )
    inp, out = io_quantisation(request.path)
    exactness = pair_report(request.path).to_dict()
    if q.check_batch is not None:
        exactness["host"] = layer_check(request.path, q.check_batch).to_dict()
    return {
        "input": inp,
        "output": out,
        "quantizer": QUANTIZER,
        "weight_grid": q.grid.describe(),
        "fused_ops": fused_ops(request.path),
        "rewrites": info["rewrites"],
        "exactness": exactness,
        "activation_ranges": info["activation_ranges"],
    }


def preprocess_model(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing: shape inference and graph cleanup before quantisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as exc:  # its symbolic shape inference fails on some graphs; ONNX's is enough
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception:
            raise ExportError(
                f"ONNX Runtime could not pre-process {src.name} for quantisation: {exc}",
                "re-export the float model; report the failing op",
            ) from exc
    return dst


def _tensor_probe(model_path: Path) -> tuple[Any, str, list[str]]:
    """A session that returns every float tensor of the graph (the tensors ORT may quantise), its
    input name and the tensor names; the batch dimension symbolic, so a call may take many images.

    Calibration is not timing: it uses the threads torch may use (every core, or this lane's).
    """
    import onnx
    import onnxruntime as ort
    import torch

    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        vi.name
        for vi in [*inferred.graph.value_info, *inferred.graph.output]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    existing = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        for out in node.output:
            if out in floats and out not in names:
                names.append(out)
                if out not in existing:
                    info = onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)
                    model.graph.output.append(info)
    _symbolic_batch(model)
    options = ort.SessionOptions()
    # A batch the graph cannot take is an expected kernel error (then one image a call): shown
    # under --debug only
    options.log_severity_level = ORT_FATAL_ONLY if ort_log_level() >= ORT_QUIET else ort_log_level()
    options.intra_op_num_threads = torch.get_num_threads()  # this process's share (edgekit.lanes)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, model.graph.input[0].name, names


def _symbolic_batch(model: Any) -> None:
    """The probe graph with its batch dimension symbolic: the input's and outputs', and a Reshape
    target that spells out a batch of 1 takes the input's batch instead (-1, or ONNX's 0 = copy
    the input's dimension when the target has a -1 already). A Reshape whose leading 1 is no
    batch mixes the images of a call: :func:`_batches_images` catches that."""
    from onnx import numpy_helper

    del model.graph.value_info[:]  # the batch-1 shapes ORT would otherwise check a batch against
    for vi in [model.graph.input[0], *model.graph.output]:
        if vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]]).copy()
        if shape.ndim != 1 or not shape.size or shape[0] != 1 or 0 in shape:
            continue
        shape[0] = 0 if -1 in shape else -1
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
        for attr in node.attribute:
            if attr.name == "allowzero":
                attr.i = 0  # the 0 copies a dimension (the target has no other 0)


def activation_ranges(
    model_path: Path,
    tensors: np.ndarray,
    method: str = DEFAULT_METHOD,
    symmetric: bool = False,
    batch: int = 16,
) -> dict[str, tuple[float, float]]:
    """Per-tensor [lo, hi] of the graph input and every float node output over ``tensors`` (NCHW).

    One ONNX Runtime pass, up to ``batch`` images a call when the graph computes each image of a
    batch as it computes it alone (else one a call; see :func:`_images_per_call`); the graph
    outputs keep their maximum (see :func:`collect_ranges`).
    """
    import onnx

    session, input_name, names = _tensor_probe(model_path)
    outputs = [o.name for o in onnx.load(str(model_path), load_external_data=False).graph.output]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        outs = session.run(names, {input_name: x})
        return {input_name: x, **dict(zip(names, outs, strict=True))}

    step = _images_per_call(run, tensors, batch)
    batches = (tensors[i : i + step] for i in range(0, len(tensors), step))
    return collect_ranges(run, batches, method, symmetric, outputs)


def _images_per_call(run: ProbeRun, tensors: np.ndarray, batch: int) -> int:
    """Up to ``batch`` images a call, as many as keep a call's tensors within
    :data:`PROBE_MEMORY`; one when the graph cannot batch (:func:`_batches_images`)."""
    if not _batches_images(run, tensors[:2]):
        return 1
    per_image = sum(value.nbytes for value in run(tensors[:1]).values())
    return max(1, min(batch, PROBE_MEMORY // per_image))


def _batches_images(run: ProbeRun, pair: np.ndarray) -> bool:
    """Whether every tensor of a two-image call is the two one-image calls' tensors stacked (a
    reshape that spells out a batch of 1 fails or mixes the images: then one image a call)."""
    if len(pair) < 2:
        return False
    try:
        both = run(pair)
    except Exception:  # ORT's shape errors for a batch the graph cannot take vary by op
        return False
    alone = [run(pair[i : i + 1]) for i in range(2)]
    for name, value in both.items():
        single = [a[name] for a in alone]
        if value.shape == single[0].shape:  # a batch-independent tensor (a constant)
            stacked = single[0]
        elif single[0].shape[:1] == (1,) and value.shape == (2, *single[0].shape[1:]):
            stacked = np.concatenate(single)
        else:
            return False
        # MLAS may block a batch differently: float32 rounding, never another image's values
        if not np.allclose(value, stacked, rtol=1e-3, atol=1e-4 * float(np.abs(stacked).max(initial=0.0))):
            return False
    return True


def write_calibration_cache(ranges: dict[str, tuple[float, float]], path: Path) -> Path:
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    data = {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
    return path


def quantize_onnx(
    src: Path,
    dst: Path,
    tensors: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    grid: WeightGrid = ONNX_GRID,
    levels: dict[str, list[int]] | None = None,
    symmetric_activations: bool = False,
) -> dict[str, Any]:
    """Write a QDQ int8 copy of ``src`` at ``dst`` with weights on ``grid``; ``levels`` ({weight
    name: levels per output channel}) fixes the grid where the caller already rounded onto it (GPTQ,
    W6A8). Returns the activation ranges used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="edgekit-int8-") as tmp:
        pre = preprocess_model(src, Path(tmp) / "pre.onnx")
        rewrites = int8_graph_rewrites(pre)
        ranges = activation_ranges(pre, tensors, method, symmetric_activations)
        cache = write_calibration_cache(ranges, Path(tmp) / "ranges.json")
        overrides = weight_overrides(pre, grid, levels or {})
        stems = stem_convs(pre)
        if stems:
            rewrites["stem Conv (reads the image) kept float"] = len(stems)
        try:
            quantize_static(
                str(pre),
                str(dst),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                per_channel=grid.per_channel,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": symmetric_activations,
                    "WeightSymmetric": True,
                    "TensorQuantOverrides": overrides,
                },
                calibration_cache_path=str(cache),
                nodes_to_exclude=stems,
            )
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime int8 quantisation of {src.name} failed: {exc}",
                "try --per-tensor or report the failing op",
            ) from exc
    float_outputs(dst)
    scales = constant_muls_as_scales(dst)
    if scales:
        rewrites["Mul by a positive constant -> the QuantizeLinear scale before it"] = scales
    return {"activation_ranges": ranges, "rewrites": rewrites}


def int8_graph_rewrites(path: Path) -> dict[str, int]:
    """The int8 file's exact rewrites of the float graph at ``path``, in place: channel shuffles
    as one Gather, average pools as depthwise convolutions (:mod:`exporters.onnx`). Returns the
    counts."""
    import onnx

    from exporters.onnx import avg_pools_as_depthwise, channel_shuffles_as_gathers

    model = onnx.load(str(path))
    counts = {
        "Reshape + Transpose + Reshape (channel shuffle) -> Gather": channel_shuffles_as_gathers(model),
        "AveragePool -> depthwise Conv (1/k^2)": avg_pools_as_depthwise(model),
    }
    if any(counts.values()):
        onnx.save(model, str(path))
    return {rewrite: n for rewrite, n in counts.items() if n}


def stem_convs(path: Path) -> list[str]:
    """The convolutions that read the graph input (the image), unless a max pool follows them.

    They stay float: with 3 input channels ORT's int8 kernel has too little to reduce per output
    (K = 27) and runs 2-3x slower than its float stem kernel (MobileNetV3-small at 224 px: 0.82
    against 0.28 ms), and the image needs no rounding onto 256 levels. Before a max pool they
    stay int8: ORT moves the pool's QuantizeLinear ahead of it and then runs the pool on uint8 in
    NCHW, its slow kernel (SqueezeNet 1.1: 9 ms, against 0.1 ms in NHWC).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    readers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)

    def pooled(tensor: str) -> bool:
        return any(
            n.op_type == "MaxPool" or (n.op_type in ("Relu", "Clip") and pooled(n.output[0]))
            for n in readers[tensor]
        )

    stems = [n for n in readers[graph.input[0].name] if n.op_type == "Conv"]
    return [n.name for n in stems if not pooled(n.output[0])]


def weight_overrides(
    model_path: Path, grid: WeightGrid, levels: dict[str, list[int]]
) -> dict[str, list[dict[str, Any]]]:
    """ORT ``TensorQuantOverrides`` putting every conv/gemm/matmul weight on ``grid``: per output
    channel (or per tensor) the scale ``peak / levels``, zero point 0."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    inits = {i.name: i for i in graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        name = node.input[1]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        if node.op_type == "Conv":
            rows, axis, pairs = w.reshape(w.shape[0], -1), 0, reads_pairs(w.shape, attrs.get("group", 1))
        elif w.ndim != 2:
            continue  # a batched MatMul weight: ORT keeps it per tensor by its own rule
        else:
            transposed = node.op_type == "Gemm" and attrs.get("transB", 0) == 1
            rows, axis = (w, 0) if transposed else (w.T, 1)
            pairs = reads_pairs(rows.shape)
        steps = _steps(rows, grid, pairs, levels.get(name))
        if grid.per_channel:
            overrides[name] = [{"axis": axis, "scale": float(s), "zero_point": 0} for s in steps]
        else:
            overrides[name] = [{"scale": float(steps[0]), "zero_point": 0}]
    return overrides


def _steps(rows: np.ndarray, grid: WeightGrid, pairs: bool, levels: list[int] | None) -> np.ndarray:
    if levels is None or len(levels) != len(rows):
        return grid.steps(rows, pairs)
    peaks = np.maximum(grid.peaks(rows), np.finfo(np.float32).tiny)
    return (peaks / np.asarray(levels, np.float32)).astype(np.float32)


def float_outputs(path: Path) -> list[str]:
    """Drop the Q/DQ pair ``quantize_static`` puts on each graph output: the logits stay float.

    ORT then runs the last op as QGemm/QLinearMatMul with a float output. Rounding the logits to
    256 levels over [-10, 30] (a 0.15 step) alone flipped top-1 on 1.2 % of ImageNet images
    (docs/int8.md); nothing downstream needs them in integers.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    dropped = []
    for output in graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = producer.get(q.input[0])
        if source is None or any(q.input[0] in n.input for n in graph.node if n is not q):
            continue  # the float value feeds other nodes too (or is the graph input): leave it
        source.output[list(source.output).index(q.input[0])] = output.name
        graph.node.remove(q)
        graph.node.remove(dq)
        dropped.append(output.name)
    if dropped:
        from exporters.onnx import drop_unused_initializers

        drop_unused_initializers(graph)  # the pairs' scales and zero-points
        onnx.save(model, str(path))
    return dropped


def constant_muls_as_scales(path: Path) -> int:
    """Fold each ``Q(a) -> DQ -> Mul(c) -> Q(b)`` with a positive scalar constant ``c`` (hard-swish's
    and hard-sigmoid's 1/6) into ``Q(a)`` on ``b``'s grid with scale ``s_b / c``, in place.

    ``Q(x * c; s_b, z_b) = Q(x; s_b / c, z_b)``: the file now gives the code nearest to ``c * x``
    on b's grid, where it rounded twice (never further from float than before, within one code
    inside a's range) and ORT has one ``QLinearMul`` fewer to run (MobileNetV3-large: 29 of 58,
    about a tenth of its int8 time). Returns how many were folded.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers = collections.Counter(name for node in graph.node for name in node.input)

    def scalar(name: str) -> float | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input if i):
            return None
        code, scale, *zero = (numpy_helper.to_array(inits[i]) for i in dq.input if i)
        value = (code.astype(np.float64) - (zero[0] if zero else 0)) * scale
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    def only_reader(name: str, op: str) -> Any:
        nodes = [n for n in graph.node if name in n.input]
        return nodes[0] if readers[name] == 1 and len(nodes) == 1 and nodes[0].op_type == op else None

    folded = 0
    for mul in [n for n in graph.node if n.op_type == "Mul"]:
        consts = [scalar(name) for name in mul.input]
        if sorted(c is None for c in consts) != [False, True]:
            continue
        k = consts.index(None)  # the input that is not the constant
        c = consts[1 - k]
        dq_a, dq_c = producer.get(mul.input[k]), producer[mul.input[1 - k]]
        q_a = producer.get(dq_a.input[0]) if dq_a is not None and dq_a.op_type == "DequantizeLinear" else None
        q_b = only_reader(mul.output[0], "QuantizeLinear")
        if c <= 0 or q_a is None or q_a.op_type != "QuantizeLinear" or q_b is None:
            continue
        if q_b.input[1] not in inits:
            continue
        if only_reader(q_a.output[0], "DequantizeLinear") is not dq_a or readers[dq_a.output[0]] != 1:
            continue
        scale = numpy_helper.to_array(inits[q_b.input[1]]).astype(np.float64) / c
        name = f"{q_b.input[1]}_over_{folded}"
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), name))
        del q_a.input[1:]
        q_a.input.extend([name, *q_b.input[2:]])  # b's zero point (and so b's integer type)
        q_a.output[0] = q_b.output[0]
        producer[q_a.output[0]] = q_a
        readers.subtract(mul.input)
        for node in (dq_a, mul, q_b, *([dq_c] if readers[dq_c.output[0]] == 0 else [])):
            graph.node.remove(node)  # the constant's DQ goes with its last reader
        folded += 1
    if folded:
        from exporters.onnx import drop_unused_initializers

        drop_unused_initializers(graph)
        onnx.save(model, str(path))
    return folded


def fused_ops(path: Path) -> dict[str, int]:
    """Op histogram of the graph ORT actually runs (after its QDQ fusions)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-opt-") as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = ort_log_level()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimised)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimised)).graph
    return dict(collections.Counter(node.op_type for node in graph.node).most_common())


def io_quantisation(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input/output entries for the manifest: the QDQ file keeps float I/O (the Q/DQ are inside)."""
    import onnx

    graph = onnx.load(str(path)).graph

    def describe(vi: Any) -> dict[str, Any]:
        shape = vi.type.tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape]
        return {"name": vi.name, "shape": dims, "dtype": "float32", "scale": None, "zero_point": None}

    return describe(graph.input[0]), describe(graph.output[0])
