"""OpenVINO (CPU plug-in): a second, independent engine for the ``.onnx`` files, float and QDQ int8.

OpenVINO reads ONNX directly and compiles it at load (0.2-0.9 s). On CPUs with AVX-512 BF16 or
AMX its default inference precision is bf16, so an fp32 file would silently run in bf16: every
session sets ``INFERENCE_PRECISION_HINT=f32`` (the QDQ int8 parts stay int8 under that hint; the
hint only governs what is not quantised). Named openvino.py, the package is imported inside
functions only, so this module never shadows it (runner.py does not list it).
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from typing import Any

import numpy as np

from runtimes.base import Runtime, Session, shares, tensor_info

INT8_PRECISIONS = {"u8", "i8"}
# compute layers: an int8 file's layer of these types running in f32 is off the int8 fast path
_COMPUTE = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Eltwise", "Pooling", "Reduce"}


class OpenVinoRuntime(Runtime):
    name = "openvino"
    suffixes = (".onnx",)
    accelerator = "CPU plug-in (oneDNN)"

    def available(self) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            return False, f"OpenVINO is not installed ({exc}); pip install openvino"
        return True, ""

    def version(self) -> str | None:
        try:
            import openvino
        except ImportError:
            return None
        return openvino.__version__.split("-")[0]

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> OpenVinoSession:
        return OpenVinoSession(path, threads, **opts)

    def profile(
        self, path: str | os.PathLike[str], threads: int, native: Any, runs: int = 50, precision: str = "fp32"
    ) -> dict[str, Any]:
        """Per-category time from OpenVINO's per-layer counters (PERF_COUNT), median of ``runs``."""
        warmup = 10
        sess = OpenVinoSession(path, threads, profiling=True)
        times: dict[str, list[float]] = defaultdict(list)
        kinds: dict[str, tuple[str, str]] = {}
        for i in range(warmup + runs):
            sess.invoke(native)
            if i < warmup:
                continue
            for info in sess.request.get_profiling_info():
                if info.status.name == "EXECUTED":
                    times[info.node_name].append(info.real_time.total_seconds() * 1e3)
                    kinds[info.node_name] = (info.node_type, category(info.node_type, info.exec_type))
        per_category: dict[str, float] = defaultdict(float)
        per_type: dict[str, float] = defaultdict(float)
        for node, values in times.items():
            ms = statistics.median(values)
            layer_type, kind = kinds[node]
            per_category[kind] += ms
            per_type[layer_type] += ms
        return {
            "source": f"OpenVINO PERF_COUNT, per-layer median of {runs} runs after {warmup} warm-up, "
            f"{threads} thread(s); layers of the compiled graph",
            **shares(per_category),
            "by_op_ms": {k: round(v, 4) for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])},
            "slow_path": self.slow_path(path) if precision == "int8" else [],
        }

    def slow_path(self, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Compute layers of the compiled graph that run in floating point (an int8 file's layers
        off the int8 kernels), read from each layer's ``runtimePrecision``."""
        sess = OpenVinoSession(path, 1)
        found: dict[str, int] = defaultdict(int)
        for layer in sess.layers():
            if layer["type"] in _COMPUTE and layer["precision"] not in INT8_PRECISIONS:
                found[f"{layer['type']} ({layer['precision']})"] += 1
        why = "runs in floating point in OpenVINO's compiled graph"
        return [{"op": op, "count": n, "why": why} for op, n in sorted(found.items())]


class OpenVinoSession(Session):
    runtime = "openvino"
    layout = "NCHW"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, profiling: bool = False) -> None:
        import openvino as ov

        super().__init__(path, threads)
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # never bf16 behind the user's back
            "PERF_COUNT": profiling,
        }
        self._ov = ov
        self.compiled = ov.Core().compile_model(os.fspath(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        inp, out = self.compiled.inputs[0], self.compiled.outputs[0]
        shape = [d.get_length() if d.is_static else -1 for d in inp.get_partial_shape()]
        self.input = tensor_info(inp.get_any_name(), shape, np.float32)
        self.output = tensor_info(out.get_any_name(), [-1, -1], np.float32)

    def prepare(self, x: np.ndarray) -> Any:
        return np.ascontiguousarray(x, dtype=np.float32)

    def invoke(self, native: Any) -> Any:
        return self.request.infer({0: native})[0]

    def layers(self) -> list[dict[str, Any]]:
        """The compiled graph's layers: type, the precision they run in, the kernel chosen."""
        found = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            found.append(
                {
                    "name": op.get_friendly_name(),
                    "type": info["layerType"].astype(str),
                    "precision": info["runtimePrecision"].astype(str),
                    "kernel": info["primitiveType"].astype(str),
                }
            )
        return found

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": self._ov.__version__.split("-")[0],
            "inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
        }


def category(layer_type: str, kernel: str) -> str:
    """One of runtimes.base.CATEGORIES from a layer's type and its kernel name (``brgconv_*_dw_*``
    is depthwise, ``*_1x1_*`` pointwise)."""
    kernel = kernel.lower()
    if layer_type in ("Convolution", "GroupConvolution"):
        if "_dw" in kernel:
            return "depthwise"
        return "pointwise" if "1x1" in kernel else "conv"
    if layer_type in ("FullyConnected", "MatMul"):
        return "pointwise"
    if layer_type in ("Pooling", "Reduce"):
        return "pooling"
    if layer_type in ("FakeQuantize", "Quantize", "Dequantize"):
        return "quantise/dequantise"
    if layer_type in ("Reshape", "Transpose", "Concatenation", "Split", "Gather", "Reorder", "Squeeze"):
        return "reshape/transpose"
    if layer_type in ("Eltwise", "Subgraph", "Math", "Convert", "Multiply", "Add"):
        return "element-wise"
    return "other"
