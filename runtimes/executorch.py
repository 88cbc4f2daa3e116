"""ExecuTorch: the engine for ``.pte`` files, through its Python binding with XNNPACK.

The binding (``executorch.extension.pybindings._C``) links libtorch, so running a ``.pte`` from
Python here needs torch. It is imported directly: ``executorch.runtime`` would import the whole
exporter and torchao first (5-8 s, ~400 MB). On the targets, runner.py calls the same runtime
libraries through edgekit's C API instead (runtimes/executorch_capi.cpp), with no torch.
XNNPACK's thread pool is global to the process; a session sets it before loading.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgekit.console import quiet_native
from runtimes.base import Runtime, Session, tensor_info


class ExecuTorchRuntime(Runtime):
    name = "executorch"
    suffixes = (".pte",)
    accelerator = "XNNPACK"

    def available(self) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401  (the binding links libtorch)
            from executorch.extension.pybindings import _C  # noqa: F401
        except ImportError as exc:
            return False, f"ExecuTorch is not installed ({exc}); pip install --no-deps executorch"
        return True, ""

    def version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("executorch")
        except PackageNotFoundError:
            return None

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> ExecuTorchSession:
        return ExecuTorchSession(path, threads)


class ExecuTorchSession(Session):
    runtime = "executorch"
    layout = "NCHW"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        import torch
        from executorch.extension.pybindings import _C

        super().__init__(path, threads)
        self._torch = torch
        with quiet_native():  # cpuinfo's and the thread pool's log lines
            _C._unsafe_reset_threadpool(threads)
            self._module = _C._load_for_executorch(os.fspath(path))
        meta = self._module.method_meta("forward")
        inp, out = meta.input_tensor_meta(0), meta.output_tensor_meta(0)
        self.input = tensor_info("x", list(inp.sizes()), np.float32)
        self.output = tensor_info("logits", list(out.sizes()), np.float32)

    def prepare(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def invoke(self, native: Any) -> Any:
        return self._module.forward([native])[0]

    def finish(self, raw: Any) -> np.ndarray:
        out = raw.numpy().astype(np.float32, copy=False)
        return out.reshape(out.shape[0], -1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "delegate": "XNNPACK"}
