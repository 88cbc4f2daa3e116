"""ONNX Runtime, CPUExecutionProvider: the engine for ``.onnx`` files (float and QDQ int8).

Named ort.py, not onnxruntime.py, so that running runtimes/runner.py as a script (which puts
runtimes/ first on sys.path) can never shadow the real onnxruntime package.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.console import ort_log_level
from runtimes.base import Runtime, Session, conv_kind, quantize, shares, tensor_info

OPT_LEVELS = ("disable", "basic", "extended", "all")
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


class OrtRuntime(Runtime):
    name = "onnxruntime"
    suffixes = (".onnx",)
    accelerator = "CPUExecutionProvider"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"ONNX Runtime is not installed ({exc}); pip install onnxruntime"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return False, "this onnxruntime build has no CPUExecutionProvider; pip install onnxruntime"
        return True, ""

    def version(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        return ort.__version__

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> OrtSession:
        return OrtSession(path, threads, **opts)

    def profile(
        self, path: str | os.PathLike[str], threads: int, native: Any, runs: int = 50, precision: str = "fp32"
    ) -> dict[str, Any]:
        """Per-category time (ms per run, share) from ORT's profiler, plus the fast-path check."""
        import onnx
        from onnx import numpy_helper

        warmup = 10
        with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            sess = OrtSession(path, threads, profile=str(Path(tmp) / "ort"), optimized_model_path=optimized)
            for _ in range(warmup + runs):
                sess.invoke(native)
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
            per_category[category(op_types[name], nodes.get(name), inits)] += ms
        return {
            "source": f"ONNX Runtime profiler (enable_profiling), per-node median of {runs} runs after "
            f"{warmup} warm-up, {threads} thread(s); ops of the optimised graph",
            **shares(per_category),
            "by_op_ms": {k: round(v, 4) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "slow_path": slow_path_ops(graph, per_op) if precision == "int8" else [],
        }

    def slow_path(self, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Float ops left between Q/DQ in the graph ONNX Runtime runs (after its QDQ fusions)."""
        import onnx

        with tempfile.TemporaryDirectory(prefix="edgekit-int8-graph-") as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            OrtSession(path, 1, optimized_model_path=optimized)
            return slow_path_ops(onnx.load(optimized).graph)


class OrtSession(Session):
    """Options: ``graph_optimization`` (disable/basic/extended/all), ``profile`` (True or a file
    prefix: ORT's JSON trace, see :meth:`end_profiling`), ``optimized_model_path`` (write the graph
    ORT actually runs)."""

    runtime = "onnxruntime"
    layout = "NCHW"

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int = 1,
        graph_optimization: str = "all",
        profile: bool | str = False,
        optimized_model_path: str | os.PathLike[str] | None = None,
        spin: bool = False,
    ) -> None:
        import onnxruntime as ort

        super().__init__(path, threads)
        if graph_optimization not in OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {OPT_LEVELS}, got {graph_optimization!r}")
        so = ort.SessionOptions()
        so.log_severity_level = ort_log_level()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # Worker threads that spin between ops keep a core busy: on a shared 2-core host another
        # process then delays them, and 2 threads ran slower than 1 (MobileNetV3 fp32 at load 9:
        # 1 thread 48.7 ms, 2 spinning 62.8 ms, 2 sleeping 25.6 ms; docs/bench.md). Off unless asked.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.spin = spin
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        if profile:
            so.enable_profiling = True
            if isinstance(profile, str):
                so.profile_file_prefix = profile
        if optimized_model_path:
            so.optimized_model_filepath = os.fspath(optimized_model_path)
        self._ort = ort
        self._sess = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
        self.graph_optimization = graph_optimization
        inp, out = self._sess.get_inputs()[0], self._sess.get_outputs()[0]
        self._in_dtype = np.dtype(_ORT_TYPES.get(inp.type, np.float32))
        self._out_dtype = np.dtype(_ORT_TYPES.get(out.type, np.float32))
        in_q = _io_quant(path, inp.name, "DequantizeLinear") if self._in_dtype.kind != "f" else (None, None)
        out_q = _io_quant(path, out.name, "QuantizeLinear") if self._out_dtype.kind != "f" else (None, None)
        self.input = tensor_info(inp.name, inp.shape, self._in_dtype, *in_q)
        self.output = tensor_info(out.name, out.shape, self._out_dtype, *out_q)

    def prepare(self, x: np.ndarray) -> Any:
        return {
            self.input["name"]: quantize(x, self.input["scale"], self.input["zero_point"], self._in_dtype)
        }

    def invoke(self, native: Any) -> Any:
        return self._sess.run(None, native)[0]

    def end_profiling(self) -> str:
        """Stop ORT's profiler; returns the path of its JSON trace."""
        return self._sess.end_profiling()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": self._ort.__version__,
            "provider": "CPUExecutionProvider",
            "graph_optimization": self.graph_optimization,
            "spinning": self.spin,
        }


def _io_quant(path: str | os.PathLike[str], tensor: str, op_type: str) -> tuple[float, int]:
    """Scale/zero point of an integer graph input (its DequantizeLinear) or output (its QuantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        linked = node.input[0] == tensor if op_type == "DequantizeLinear" else tensor in node.output
        if node.op_type == op_type and linked:
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            return float(inits[node.input[1]]), int(0 if zp is None else zp)
    raise ValueError(f"{path}: integer tensor {tensor!r} has no {op_type} giving its scale")


# --- where the time goes: op categories, the profiler's trace, the int8 fast path --------------------

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


def category(op_type: str, node: Any = None, inits: dict[str, list[int]] | None = None) -> str:
    """Category of an ONNX Runtime node (``node``: the optimised graph's NodeProto, for convs)."""
    if op_type in _ORT_CONV:
        if node is None:
            return "conv"
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = node.input[3] if op_type == "QLinearConv" else node.input[1]
        return conv_kind(group, (inits or {}).get(weight), nhwc=False)
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


def _last_runs(trace: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Node events inside the last ``runs`` model_run windows (the warm-up runs are dropped)."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")[-runs:]
    if not windows:
        return []
    start = windows[0][0]
    return [
        e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start
    ]


def slow_path_ops(graph: Any, per_op_ms: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Float compute ops left in an int8 model's optimised graph: each costs a Dequantize before and a
    Quantize after, and runs in float32 instead of int8. The stem conv, which reads the float image,
    is float by edgekit's choice (``calibration.onnx_int8.stem_convs``), not for want of a kernel."""
    images = {i.name for i in graph.input}
    counts = Counter(
        n.op_type
        for n in graph.node
        if n.op_type not in _ORT_INT8 | _ORT_QDQ | _ORT_SHAPE
        and category(n.op_type) not in ("reshape/transpose", "quantise/dequantise")
        and not (n.op_type in ("Conv", "FusedConv") and n.input[0] in images)
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
