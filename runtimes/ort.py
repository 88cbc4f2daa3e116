"""ONNX Runtime, CPUExecutionProvider: the engine for ``.onnx`` files (float and QDQ int8).

Named ort.py, not onnxruntime.py, so that running runtimes/runner.py as a script (which puts
runtimes/ first on sys.path) can never shadow the real onnxruntime package.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgekit.console import ort_log_level
from runtimes.base import Runtime, Session, quantize, tensor_info

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
    ) -> None:
        import onnxruntime as ort

        super().__init__(path, threads)
        if graph_optimization not in OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {OPT_LEVELS}, got {graph_optimization!r}")
        so = ort.SessionOptions()
        so.log_severity_level = ort_log_level()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
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
