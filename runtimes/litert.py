"""LiteRT (ai_edge_litert's TFLite Interpreter) for ``.tflite`` files; XNNPACK on by default.

``xnnpack=False`` builds the interpreter with the BUILTIN_WITHOUT_DEFAULT_DELEGATES op resolver,
i.e. the plain TFLite kernels, to show what the delegate buys (or why an op falls off it).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from edgekit.console import quiet_native
from runtimes.base import Runtime, Session, conv_kind, p50, quantize, tensor_info


class LiteRTRuntime(Runtime):
    name = "litert"
    suffixes = (".tflite",)
    accelerator = "XNNPACK"

    def available(self) -> tuple[bool, str]:
        try:
            from ai_edge_litert import interpreter  # noqa: F401
        except ImportError as exc:
            return False, f"LiteRT is not installed ({exc}); pip install ai-edge-litert"
        return True, ""

    def version(self) -> str | None:
        from importlib import metadata

        try:
            return metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:
            return None

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> LiteRTSession:
        return LiteRTSession(path, threads, **opts)

    def profile(
        self, path: str | os.PathLike[str], threads: int, native: Any, runs: int = 50, precision: str = "fp32"
    ) -> dict[str, Any]:
        """Op categories, delegated vs not, and whole-graph p50 with and without XNNPACK (LiteRT's
        Python API has no per-op profiler: no per-op times are invented)."""
        ops = LiteRTSession(path, threads, xnnpack=True).ops()
        counts: dict[str, Counter] = defaultdict(Counter)
        for op in ops:
            counts[category(op["op_name"], op["weight_shape"])][
                "delegated" if op["delegated"] else "kernel"
            ] += 1
        off = Counter(op["op_name"] for op in ops if not op["delegated"])
        timed = {}
        for name, flag in (("xnnpack", True), ("builtin", False)):
            session = LiteRTSession(path, threads, xnnpack=flag)
            timed[name] = p50(lambda s=session: s.invoke(native), 10, runs)
        why = "not delegated to XNNPACK: runs on the TFLite kernel between two delegate partitions"
        return {
            "source": "LiteRT op list after delegation (ai_edge_litert's Python API has no per-op "
            f"profiler; no per-op times); whole-graph p50 of {runs} runs, {threads} thread(s)",
            "by_category_ms": None,
            "op_counts": {cat: dict(c) for cat, c in counts.items()},
            "delegated_ops": sum(op["delegated"] for op in ops),
            "total_ops": len(ops),
            "p50_ms_xnnpack": timed["xnnpack"],
            "p50_ms_builtin": timed["builtin"],
            "slow_path": [{"op": op, "count": n, "ms": None, "why": why} for op, n in off.most_common()],
        }

    def slow_path(self, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """The ops XNNPACK does not take (they run on the TFLite kernels between partitions)."""
        off = Counter(op["op_name"] for op in LiteRTSession(path, 1).ops() if not op["delegated"])
        return [{"op": op, "count": n} for op, n in off.most_common()]


class LiteRTSession(Session):
    runtime = "litert"
    layout = "NHWC"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, xnnpack: bool = True) -> None:
        from ai_edge_litert import interpreter as tfl

        super().__init__(path, threads)
        resolver = (
            tfl.OpResolverType.AUTO if xnnpack else tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        self.xnnpack = xnnpack
        # The original ops, read before allocate_tensors() applies the delegate.
        with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++
            self._interp = tfl.Interpreter(
                model_path=os.fspath(path), num_threads=threads, experimental_op_resolver_type=resolver
            )
            self._interp.allocate_tensors()
        inp, out = self._interp.get_input_details()[0], self._interp.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self._in_dtype, self._out_dtype = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
        self._batch_size = int(inp["shape"][0])
        dynamic = int(inp["shape_signature"][0]) == -1
        self.input = tensor_info(
            inp["name"],
            [None if dynamic else self._batch_size, *inp["shape"][1:]],
            self._in_dtype,
            *_quant(inp),
        )
        self.output = tensor_info(out["name"], out["shape"], self._out_dtype, *_quant(out))

    def prepare(self, x: np.ndarray) -> Any:
        native = quantize(x, self.input["scale"], self.input["zero_point"], self._in_dtype)
        if self.input["shape"][0] is None and native.shape[0] != self._batch_size:
            self._interp.resize_tensor_input(self._in_index, list(native.shape))
            self._interp.allocate_tensors()
            self._batch_size = native.shape[0]
        return native

    def invoke(self, native: Any) -> Any:
        self._interp.set_tensor(self._in_index, native)
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)

    def ops(self) -> list[dict[str, Any]]:
        """The model's ops: {index, op_name, delegated, weight_shape}. XNNPACK replaces each partition
        it takes by one ``DELEGATE`` node; an op outside every partition runs on the TFLite kernels
        (the slow path)."""
        details = self._interp._get_ops_details()
        original = [d for d in details if d["op_name"] != "DELEGATE"]
        delegated = set().union(*(_partition(d, original) for d in details if d["op_name"] == "DELEGATE"))
        return [
            {
                "index": d["index"],
                "op_name": d["op_name"],
                "delegated": d["index"] in delegated,
                "weight_shape": self._weight_shape(d),
            }
            for d in original
        ]

    def _weight_shape(self, op: dict[str, Any]) -> list[int] | None:
        """Shape of an op's second input: a conv filter is [out, kh, kw, in] ([1, kh, kw, c] depthwise)."""
        if len(op["inputs"]) < 2 or op["inputs"][1] < 0:
            return None
        return [int(d) for d in self._interp._get_tensor_details(op["inputs"][1], 0)["shape"]]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": LiteRTRuntime().version(),
            "delegate": "XNNPACK" if self.xnnpack else None,
        }


def _quant(details: dict[str, Any]) -> tuple[float | None, int | None]:
    scale, zero_point = details.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale else (None, None)


def _partition(delegate: dict[str, Any], original: list[dict[str, Any]]) -> set[int]:
    """Indices of the original ops a DELEGATE node replaced: walk back from its outputs to its inputs
    (the delegate node's inputs are exactly the tensors its partition reads from outside)."""
    producer = {int(t): d for d in original for t in d["outputs"]}
    boundary = {int(t) for t in delegate["inputs"]}
    stack, seen, ops = [int(t) for t in delegate["outputs"]], set(), set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor in boundary or tensor not in producer:
            continue
        seen.add(tensor)
        op = producer[tensor]
        ops.add(op["index"])
        stack.extend(int(t) for t in op["inputs"] if t >= 0)
    return ops


# --- op categories ---------------------------------------------------------------------------

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


def category(op_name: str, weight_shape: list[int] | None = None) -> str:
    if op_name == "CONV_2D":
        return conv_kind(1, weight_shape, nhwc=True)
    if op_name in _TFL_ELEMENTWISE:
        return "element-wise"
    return _TFL_CATEGORY.get(op_name, "other")
