"""Where the time goes, per op type, and which ops fell off the fast path.

ONNX Runtime: its profiler's JSON trace (one event per node per run) over the runs after warm-up,
convs split by the optimised graph's ``group`` attribute and kernel size; the fast-path check reads
the optimised graph ORT actually runs and lists the float ops left between Dequantize/Quantize
pairs in an int8 model (the int8 kernels do not cover them, so the tensor is converted twice).

LiteRT: ai_edge_litert 2.3.0's Python API has no per-op profiler, so no per-op times are
invented: the ops are counted per category, and the ones outside the XNNPACK delegate are listed
together with the whole-graph latency with and without the delegate.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

CATEGORIES = (
    "conv",
    "depthwise",
    "pointwise",
    "element-wise",
    "pooling",
    "reshape/transpose",
    "quantise/dequantise",
    "other",
)

_ORT_CONV = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv", "NhwcFusedConv"}
_ORT_LINEAR = {"Gemm", "MatMul", "QGemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "FusedGemm"}
_ORT_POOL = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "ReduceMean",
}
_ORT_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_ORT_SHAPE = {
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Shape",
    "Identity",
    "Expand",
    "ReorderInput",
    "ReorderOutput",
    "Pad",
    "QLinearConcat",
}
_ORT_ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "Tanh",
    "Max",
    "Min",
    "Sum",
    "Erf",
    "LeakyRelu",
    "PRelu",
    "BatchNormalization",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "Softmax",
    "Neg",
    "Sqrt",
    "Pow",
}
# ops that run in int8 (or only move data) in a QDQ model; anything else computed is float
_ORT_INT8 = {
    "QLinearConv",
    "ConvInteger",
    "QGemm",
    "MatMulInteger",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "MaxPool",
    "NhwcMaxPool",  # ORT's uint8/int8 max pool (what MaxPool between Q/DQ becomes)
}

_TFL_CATEGORY = {
    "DEPTHWISE_CONV_2D": "depthwise",
    "FULLY_CONNECTED": "pointwise",
    "BATCH_MATMUL": "pointwise",
    "AVERAGE_POOL_2D": "pooling",
    "MAX_POOL_2D": "pooling",
    "MEAN": "pooling",
    "QUANTIZE": "quantise/dequantise",
    "DEQUANTIZE": "quantise/dequantise",
    "RESHAPE": "reshape/transpose",
    "TRANSPOSE": "reshape/transpose",
    "CONCATENATION": "reshape/transpose",
    "PAD": "reshape/transpose",
    "SQUEEZE": "reshape/transpose",
    "SPLIT": "reshape/transpose",
    "STRIDED_SLICE": "reshape/transpose",
    "SLICE": "reshape/transpose",
    "GATHER": "reshape/transpose",
}
_TFL_ELEMENTWISE = {
    "ADD",
    "SUB",
    "MUL",
    "DIV",
    "RELU",
    "RELU6",
    "RELU_N1_TO_1",
    "HARD_SWISH",
    "LOGISTIC",
    "TANH",
    "MAXIMUM",
    "MINIMUM",
    "LEAKY_RELU",
    "PRELU",
    "SOFTMAX",
    "SQUARED_DIFFERENCE",
    "RSQRT",
}


def _conv_kind(group: int, weight_shape: list[int] | None, nhwc: bool) -> str:
    """depthwise (one input channel per group), pointwise (1x1, ungrouped) or conv (the rest)."""
    if not weight_shape or len(weight_shape) != 4:
        return "conv"
    kh, kw, per_group = (
        (weight_shape[1], weight_shape[2], weight_shape[3])
        if nhwc
        else (weight_shape[2], weight_shape[3], weight_shape[1])
    )
    if group > 1 and per_group == 1:
        return "depthwise"
    return "pointwise" if (kh, kw) == (1, 1) and group == 1 else "conv"


def ort_category(op_type: str, node: Any = None, inits: dict[str, list[int]] | None = None) -> str:
    """Category of an ONNX Runtime node (``node``: the optimised graph's NodeProto, for convs)."""
    if op_type in _ORT_CONV:
        if node is None:
            return "conv"
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = node.input[3] if op_type == "QLinearConv" else node.input[1]
        return _conv_kind(group, (inits or {}).get(weight), nhwc=False)
    if op_type in _ORT_LINEAR:
        return "pointwise"  # a fully connected layer is a 1x1 conv on a 1x1 map
    for ops, category in (
        (_ORT_POOL, "pooling"),
        (_ORT_QDQ, "quantise/dequantise"),
        (_ORT_SHAPE, "reshape/transpose"),
        (_ORT_ELEMENTWISE, "element-wise"),
    ):
        if op_type in ops:
            return category
    return "other"


def tflite_category(op_name: str, weight_shape: list[int] | None = None) -> str:
    if op_name == "CONV_2D":
        return _conv_kind(1, weight_shape, nhwc=True)
    if op_name in _TFL_ELEMENTWISE:
        return "element-wise"
    return _TFL_CATEGORY.get(op_name, "other")


# --- ONNX Runtime ------------------------------------------------------------------------------


def profile_ort(
    path: str | os.PathLike[str],
    threads: int,
    native_input: Any,
    warmup: int = 10,
    runs: int = 50,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Per-category time (ms per run, share) from ORT's profiler, plus the fast-path check."""
    import onnx
    from onnx import numpy_helper

    from runtimes import get_runtime

    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        sess = get_runtime("onnxruntime").load(
            path, threads=threads, profile=str(Path(tmp) / "ort"), optimized_model_path=optimized
        )
        for _ in range(warmup + runs):
            sess.invoke(native_input)
        trace = json.loads(Path(sess.end_profiling()).read_text())
        graph = onnx.load(optimized).graph
    inits = {i.name: list(numpy_helper.to_array(i).shape) for i in graph.initializer}
    nodes = {n.name: n for n in graph.node if n.name}
    durations: dict[str, list[float]] = defaultdict(list)
    op_types: dict[str, str] = {}
    for event in _last_runs(trace, runs):
        name = event["name"].removesuffix("_kernel_time")
        durations[name].append(event["dur"] / 1e3)
        op_types[name] = event["args"].get("op_name", "?")
    per_op: dict[str, float] = defaultdict(float)
    per_category: dict[str, float] = defaultdict(float)
    for name, times in durations.items():
        ms = statistics.median(times)  # median per node: a preempted run must not inflate one op
        per_op[op_types[name]] += ms
        per_category[ort_category(op_types[name], nodes.get(name), inits)] += ms
    return {
        "source": f"ONNX Runtime profiler (enable_profiling), per-node median of {runs} runs after "
        f"{warmup} warm-up, {threads} thread(s); ops of the optimised graph",
        **_shares(per_category),
        "by_op_ms": {k: round(v, 4) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
        "slow_path": ort_slow_path(graph, per_op) if precision == "int8" else [],
    }


def _last_runs(trace: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Node events inside the last ``runs`` model_run windows (the warm-up runs are dropped)."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")[-runs:]
    if not windows:
        return []
    start = windows[0][0]
    return [
        e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start
    ]


def ort_slow_path(graph: Any, per_op_ms: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Float compute ops left in an int8 model's optimised graph: each costs a Dequantize before and a
    Quantize after, and runs in float32 instead of int8."""
    counts = Counter(
        n.op_type
        for n in graph.node
        if n.op_type not in _ORT_INT8 | _ORT_QDQ | _ORT_SHAPE
        and ort_category(n.op_type) not in ("reshape/transpose", "quantise/dequantise")
    )
    qdq = Counter(n.op_type for n in graph.node if n.op_type in _ORT_QDQ)
    slow = [
        {
            "op": op,
            "count": count,
            "ms": round((per_op_ms or {}).get(op, 0.0), 4),
            "why": "no int8 kernel: runs in float32 between DequantizeLinear and QuantizeLinear",
        }
        for op, count in counts.most_common()
    ]
    if slow:
        slow.append(
            {
                "op": "QuantizeLinear+DequantizeLinear",
                "count": sum(qdq.values()),
                "ms": round(sum((per_op_ms or {}).get(op, 0.0) for op in _ORT_QDQ), 4),
                "why": "conversions left in the graph around the float ops",
            }
        )
    return slow


# --- LiteRT ------------------------------------------------------------------------------------


def profile_litert(
    path: str | os.PathLike[str],
    threads: int,
    native_input: Any,
    warmup: int = 10,
    runs: int = 50,
    xnnpack: bool = True,
) -> dict[str, Any]:
    """Op categories, delegated vs not, and whole-graph p50 with and without XNNPACK."""
    from runtimes import get_runtime

    rt = get_runtime("litert")
    ops = rt.load(path, threads=threads, xnnpack=xnnpack).ops()
    counts: dict[str, Counter] = defaultdict(Counter)
    for op in ops:
        counts[tflite_category(op["op_name"], op["weight_shape"])][
            "delegated" if op["delegated"] else "kernel"
        ] += 1
    off = Counter(op["op_name"] for op in ops if not op["delegated"])
    p50 = {
        name: _p50(rt.load(path, threads=threads, xnnpack=flag), native_input, warmup, runs)
        for name, flag in (("xnnpack", True), ("builtin", False))
    }
    return {
        "source": "LiteRT op list after delegation (ai_edge_litert 2.3.0's Python API has no per-op "
        f"profiler; no per-op times); whole-graph p50 of {runs} runs, {threads} thread(s)",
        "by_category_ms": None,
        "op_counts": {cat: dict(c) for cat, c in counts.items()},
        "delegated_ops": sum(op["delegated"] for op in ops),
        "total_ops": len(ops),
        "p50_ms_xnnpack": p50["xnnpack"],
        "p50_ms_builtin": p50["builtin"],
        "slow_path": [
            {
                "op": op,
                "count": n,
                "ms": None,
                "why": "not delegated to XNNPACK: runs on the TFLite kernel between two delegate partitions"
                if xnnpack
                else "XNNPACK disabled",
            }
            for op, n in off.most_common()
        ]
        if xnnpack
        else [],
    }


def _p50(sess: Any, native: Any, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        sess.invoke(native)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.invoke(native)
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 4)


def _shares(per_category: dict[str, float]) -> dict[str, Any]:
    total = sum(per_category.values())
    ms = {c: round(per_category.get(c, 0.0), 4) for c in CATEGORIES if per_category.get(c)}
    share = {c: round(v / total, 4) for c, v in ms.items()} if total else {}
    return {"total_ms": round(total, 4), "by_category_ms": ms, "share": share}


def dominant(profile: dict[str, Any]) -> str | None:
    """The category with the largest time share (None when the runtime gave no per-op times)."""
    share = profile.get("share") or {}
    return max(share, key=share.get) if share else None


__all__ = [
    "CATEGORIES",
    "dominant",
    "ort_category",
    "ort_slow_path",
    "profile_litert",
    "profile_ort",
    "tflite_category",
]
